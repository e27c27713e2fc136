"""The warm stage runner: stages start as thin clients of a process that imported torch and MLflow
once (:mod:`bplab.runner.client`, :mod:`bplab.runner.daemon`, :mod:`bplab.runner.protocol`)."""
