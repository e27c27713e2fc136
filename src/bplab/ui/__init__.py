"""MLflow's UI for this project: the server app that opens experiments on their runs table (``bplab ui``).

The app's names, as pyproject.toml's ``mlflow.app`` entry points declare them (``mlflow server --app-name``),
live here, where importing them costs nothing; the apps themselves are in :mod:`bplab.ui.app`.
"""

APP_NAME = "bplab-ui"
BASIC_AUTH_APP_NAME = "bplab-ui-basic-auth"
