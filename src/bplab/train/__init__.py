"""Training: the shared loop, optimizers, and the ``train@<variant>`` stage."""
