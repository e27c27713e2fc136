"""``bplab diff RUN_A RUN_B``: what differs between two training runs, and so why their metrics do.

Reads both runs' records (:mod:`bplab.lineage.record`), compares them (:mod:`bplab.lineage.diff`)
and prints the report as Markdown or JSON; ``--plot`` overlays their learning curves in a PNG.
Importing this module costs nothing: MLflow and matplotlib load when the command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

FORMATS = ("markdown", "json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab diff``'s arguments."""
    for name in ("run_a", "run_b"):
        parser.add_argument(name, metavar=name.upper(),
                            help="a training run: its id, models:/<dataset>@<alias>, models:/<dataset>/<version>, "
                                 "or a DVC experiment's name (its latest training run)")
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="markdown (also for the terminal) or json, for scripts (default: %(default)s)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw both runs' learning curves in this PNG")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the report to FILE instead of printing it")


def run(args: argparse.Namespace) -> int:
    """Make the report of ``args.run_a`` against ``args.run_b``; 0 once it is made, whatever it says."""
    from bplab.lineage import diff, record
    from bplab.tracking import store

    uri = store.tracking_uri()
    store.check_reachable(uri)
    run_ids = [record.resolve(reference, uri) for reference in (args.run_a, args.run_b)]  # both named, then read
    runs = [record.load(run_id, uri) for run_id in run_ids]
    report = diff.compare(*runs, store.repo_root())
    text = json.dumps(report, indent=2) + "\n" if args.format == "json" else diff.markdown(report)
    if args.plot is not None:
        from bplab import plots

        labels = [diff.label(report["runs"][side]) for side in ("a", "b")]
        figure = diff.curves_figure({f"{side} {name}": diff.curves(found, uri)
                                     for side, name, found in zip("AB", labels, runs)},
                                    title=f"learning curves: A {labels[0]} vs B {labels[1]}")
        plots.save(figure, args.plot)
        print(f"bplab diff: learning curves in {args.plot}", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(text)
        print(f"bplab diff: report in {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
