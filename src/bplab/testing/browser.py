"""The MLflow UI in a real browser, headless Chromium: for the UI tests and the walk-through's screenshots.

It needs the test extras (Playwright for Python drives the browser) and Debian's ``chromium``,
which ``make browser`` (part of ``make test``) installs; Playwright's own browser download is
never used. :func:`mlflow_ui` serves the UI of a store, :func:`chromium_page` gives a page
in a fresh browser profile, and the ``open_*`` functions load a UI page and wait until its real
content has rendered (the UI is a single-page app: the first HTML holds none of it).

MLflow 3.17's UI opens an experiment on the GenAI overview (traces, latency, token usage) unless
the browser has been switched to *Model training* (the switch at the top of the sidebar, which the
browser remembers); a link with ``?workflowType=machine_learning`` opens the runs table in any
browser, so the links here carry it. ``bplab ui`` (:mod:`bplab.ui.app`) opens on the runs table
without it.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from bplab.testing.local_servers import MlflowServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path(os.environ.get("BPLAB_CHROMIUM", "/usr/bin/chromium"))
# Headless, as root, with nothing that reaches out (these machines have no internet); Playwright
# adds --headless and a fresh --user-data-dir itself.
CHROMIUM_FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
MODEL_TRAINING = "workflowType=machine_learning"
# The UI's assistant panel opens by itself on a browser's first visit and covers a third of the page.
_ASSISTANT_CLOSED = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                     "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")
TIMEOUT_MS = 120_000  # a cold UI on a busy 2-core machine takes tens of seconds to render a page


@contextmanager
def mlflow_ui(backend_uri: str, workdir: Path, timeout_s: float = 180) -> Iterator[str]:
    """Serve the MLflow UI over ``backend_uri`` on 127.0.0.1 (``mlflow server``, a free port) and
    yield its base URL; its log and proxied artifacts go in ``workdir``. Stopped, with its workers, on exit."""
    server = MlflowServer(workdir, backend_uri).start(timeout_s)
    try:
        yield server.uri
    finally:
        server.stop()


@contextmanager
def chromium_page(width: int = 1400, height: int = 900, login: tuple[str, str] | None = None) -> Iterator[Page]:
    """A page of a headless Chromium (Debian's, at :data:`CHROMIUM`) with a fresh profile; ``login``,
    a user name and password, answers a server's HTTP basic-auth challenge (MLflow's basic-auth app)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} not found: `make browser` installs Debian's chromium "
                                "(or set BPLAB_CHROMIUM to a Chromium binary)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=list(CHROMIUM_FLAGS))
        try:
            credentials = {"username": login[0], "password": login[1]} if login else None
            context = browser.new_context(viewport={"width": width, "height": height}, http_credentials=credentials)
            context.add_init_script(_ASSISTANT_CLOSED)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's page, opening on its runs table."""
    return f"{base}/#/experiments/{experiment_id}?{MODEL_TRAINING}"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """The page that compares ``run_ids`` (params side by side, parallel coordinates)."""
    query = urllib.parse.urlencode({"runs": json.dumps(list(run_ids), separators=(",", ":")),
                                    "experiments": json.dumps([experiment_id])})
    return f"{base}/#/compare-runs?{query}&{MODEL_TRAINING}"


def open_runs_table(page: Page, base: str, experiment_id: str, run_names: Sequence[str]) -> None:
    """Load the experiment's page and wait until its runs table lists every name in ``run_names``."""
    page.goto(experiment_url(base, experiment_id))
    wait_for_runs_table(page, run_names)


def wait_for_runs_table(page: Page, run_names: Sequence[str]) -> None:
    """Wait until the page shows a runs table that lists every name in ``run_names``."""
    table = page.get_by_role("grid")
    for name in run_names:
        table.get_by_text(name, exact=True).first.wait_for()


def open_compare(page: Page, base: str, experiment_id: str, run_ids: Sequence[str]) -> None:
    """Load the compare page of ``run_ids`` and wait until its parallel-coordinates plot has drawn."""
    page.goto(compare_url(base, experiment_id, run_ids))
    page.get_by_text(f"Comparing {len(run_ids)} Runs").wait_for()
    page.locator(".parcoords .axis-title").first.wait_for()


def model_version_url(base: str, name: str, version: str) -> str:
    """The page of version ``version`` of registered model ``name``."""
    return f"{base}/#/models/{urllib.parse.quote(name)}/versions/{version}"


def open_model_version(page: Page, base: str, name: str, version: str, shown: str) -> None:
    """Load a registered model version's page and wait until its description shows ``shown`` (a
    line of its model card)."""
    page.goto(model_version_url(base, name, version))
    page.get_by_text(shown, exact=True).first.wait_for()
