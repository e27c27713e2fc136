"""MLflow, the one door: where the store is (store), a stage's run (recorder), the model registry
(registry), the command line's reads (queries) and a sweep's runs (sweep_runs).
"""
