"""Why two runs differ and what a model is made of: a training run's record (record), read back
from MLflow, and what is made of it: ``bplab diff`` (diff), model cards and ``bplab lineage`` (card).
"""
