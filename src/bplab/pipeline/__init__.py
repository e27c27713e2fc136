"""The DVC stages' bodies (data_stages, train_stage, evaluate) and what every stage process shares
(process).
"""
