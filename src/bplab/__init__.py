"""bplab: the PyTorch back-propagation tutorials as a DVC + MLflow experiment pipeline."""

__version__ = "0.1.0"
