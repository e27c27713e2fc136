"""params.yaml, typed: its building blocks (fields), the models (schema), metric and optimizer
names (metrics, optimizers), and reading it (load, yaml12).
"""
