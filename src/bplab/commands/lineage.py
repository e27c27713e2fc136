"""``bplab lineage REF``: the model card of a registered model or training run, read back from MLflow."""

from __future__ import annotations

import argparse

from bplab.tracking import store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab lineage``'s arguments."""
    parser.add_argument("reference", metavar="REF",
                        help="models:/<dataset>@<alias>, models:/<dataset>/<version>, a training run's id "
                             "or a DVC experiment's name")


def run(args: argparse.Namespace) -> int:
    """Print the card (:func:`bplab.lineage.card.lineage`) of the model ``args.reference`` names."""
    from bplab.lineage import card

    uri = store.tracking_uri()
    store.check_reachable(uri)
    print(card.lineage(args.reference, uri), end="")
    return 0
