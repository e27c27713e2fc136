"""``bplab report``: the study as one self-contained HTML page, to attach to a pull request or mail.

Per dataset: the table ``bplab compare`` prints (:func:`bplab.commands.compare.study`), the
champion's model card (:mod:`bplab.lineage.card`) and its run's pictures (the learning curves
and what evaluate drew, the run's ``plots/*.png``). The page links to nothing: its CSS is inline
and its pictures are embedded as ``data:`` URIs, so it reads the same offline, in a mail, or as
an attachment of a pull request.
"""

from __future__ import annotations

import argparse
import base64
import html
from pathlib import Path
from typing import Any

from bplab.commands import compare
from bplab.errors import BplabError
from bplab.tracking import queries, registry, store

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
code, pre { background: #f6f6f6; font-size: 0.9em; }
pre { padding: 0.6em; overflow-x: auto; }
.wide { overflow-x: auto; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0 1.2em; margin: 1em 0; }
.card h1 { font-size: 1.3em; } .card h2 { font-size: 1.1em; }
figure { display: inline-block; margin: 0.5em; } figure img { max-width: 520px; }
figcaption { font-size: 0.85em; color: #555; }
"""
FIRST_PICTURE = "learning_curves.png"  # then evaluate's pictures, by name


class ReportError(BplabError):
    """The store holds nothing to report."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``bplab report``'s options: which runs, as ``bplab compare`` chooses them, and the file."""
    parser.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default: %(default)s)")
    parser.add_argument("--all", action="store_true",
                        help="every finished run in the tables, not each variant's latest")
    parser.add_argument("--dataset", action="append", help="only these datasets (repeatable; default: all)")


def _table(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))

    head = "".join(f"<th>{html.escape(key)}</th>" for key in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<div class=\"wide\"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _pictures(client: Any, run_id: str) -> str:
    """The run's ``plots/*.png``, embedded."""
    pictures = {name: data for name, data in queries.artifact_folder(client, run_id, "plots").items()
                if name.endswith(".png")}
    if not pictures:  # a run without plots/
        return "<p>The champion's run has no pictures.</p>"
    names = sorted(pictures, key=lambda name: (name != FIRST_PICTURE, name))
    figures = [f'<figure><img alt="{html.escape(name.removesuffix(".png"))}" src="data:image/png;base64,'
               f'{base64.b64encode(pictures[name]).decode()}"><figcaption>{html.escape(name)}'
               "</figcaption></figure>" for name in names]
    return "".join(figures)


def _champion_section(client: Any, dataset: str, uri: str) -> str:
    import markdown

    from bplab.lineage import card

    run_id = queries.champion_run(client, dataset)
    if run_id is None:
        return (f"<p>No version of <code>{html.escape(dataset)}</code> holds <code>@{registry.CHAMPION}</code>: "
                "none was evaluated on the committed split yet.</p>")
    text = card.lineage(f"models:/{dataset}@{registry.CHAMPION}", uri)
    rendered = markdown.markdown(text, extensions=["tables", "fenced_code"], output_format="html")
    return f"<h3>The champion</h3><div class=\"card\">{rendered}</div>{_pictures(client, run_id)}"


def page(uri: str, datasets: tuple[str, ...] = (), every_run: bool = False) -> str:
    """The report of the store ``uri`` as one HTML document; a :class:`ReportError` when it holds no
    training run (of ``datasets``, when given)."""
    queries.check_store(uri)
    client = store.client(uri)
    tables = compare.study(client, datasets, every_run)
    if not any(tables.values()):
        wanted = f" of {', '.join(datasets)}" if datasets else ""
        raise ReportError(f"no finished training run{wanted} in {store.redact(uri)}: run `dvc repro` first")
    sections = [f"<h2 id=\"{html.escape(d)}\">{html.escape(d)}</h2>{_table(rows)}{_champion_section(client, d, uri)}"
                for d, rows in tables.items() if rows]
    shown = html.escape(store.redact(uri))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>bplab: the study</title>"
            f"<style>{STYLE}</style></head><body><h1>bplab: the study</h1>"
            f"<p>From the MLflow store <code>{shown}</code>: per dataset, each variant's runs "
            f"({'every finished run' if every_run else 'the latest, and the champion'}), then the champion's "
            f"model card and pictures. ★ marks the champion.</p>{''.join(sections)}</body></html>\n")


def run(args: argparse.Namespace) -> int:
    """Write the report of the store :func:`bplab.tracking.store.tracking_uri` names to ``args.out``."""
    uri = store.tracking_uri()
    store.check_reachable(uri)
    text = page(uri, tuple(args.dataset or ()), args.all)
    args.out.write_text(text, encoding="utf-8")
    print(f"bplab report: {args.out} ({len(text.encode()) // 1024} KiB, self-contained)")
    return 0
