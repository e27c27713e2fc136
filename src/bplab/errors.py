"""Errors a user can act on. Stages print their message and exit non-zero, without a traceback."""


class BplabError(Exception):
    """Base for errors caused by the user's input or environment rather than a bug."""


class ParamsError(BplabError):
    """params.yaml has an unknown key, a wrong type or an impossible value."""


class DownloadError(BplabError):
    """No source could provide a file with the expected checksum."""


class DataError(BplabError):
    """A raw or processed data file is missing, truncated or malformed."""


class ModelFileError(BplabError):
    """A saved model file is missing, unreadable, or refused because loading it could run code."""


class TrackingUnavailable(BplabError):
    """The MLflow tracking server named by MLFLOW_TRACKING_URI cannot be reached."""


class TrackingRefused(BplabError):
    """The MLflow tracking server answered, but refused the credentials (HTTP 401) or the request (403)."""
