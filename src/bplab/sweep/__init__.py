"""``bplab sweep``: the search (search), its space (space), Optuna's study (optuna_study) and DVC's
queue (dvc_queue).
"""
