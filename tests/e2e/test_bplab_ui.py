"""`bplab ui` as a user starts it, a real process over the tiny pipeline's store, opened in headless
Chromium with a fresh profile through plain links (no ``?workflowType=``): experiments open on
their runs table, a browser that chose GenAI keeps it, pictures are served, Ctrl-C stops it. And
`bplab ui --basic-auth` (``--app-name bplab-ui-basic-auth``, as a team's server runs it): the same
landing for a user who logs in, nothing without a login, and a bad set-up ends the command.

A server start costs 10 to 30 s here: one plain, one basic-auth, one that must fail at once.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from bplab.params.load import load_params
from bplab.testing import browser
from bplab.testing.local_servers import free_port, wait_for_http
from bplab.testing.scratch import REPO
from bplab.ui.app import LANDING_SCRIPT, MODEL_TRAINING, WORKFLOW_KEY
from support.pipeline import TinyPipeline
from support.processes import BPLAB, unavailable

if TYPE_CHECKING:
    from playwright.sync_api import Page

MNIST = sorted(name for name, variant in load_params(REPO / "params.yaml").train.items() if variant.dataset == "mnist")
# Where the UI goes when an experiment's link is opened: its runs table, or GenAI's overview.
LANDED = re.compile(r"/#/experiments/\d+/(runs|overview)")
AUTH_INI = """\
[mlflow]
default_permission = READ
database_uri = sqlite:///{users_db}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@dataclass(frozen=True)
class Ui:
    """A running ``bplab ui``: its base URL, its process (a session of its own) and its log."""

    base: str
    process: subprocess.Popen
    log: Path


def _stop(process: subprocess.Popen, sig: signal.Signals = signal.SIGINT) -> int:
    """Send ``sig`` to the process's session, as a terminal's Ctrl-C does, and wait; SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    return process.returncode


@contextmanager
def bplab_ui(project: Path, *args: str, env: dict[str, str]) -> Iterator[Ui]:
    """``bplab ui --port <free> ARGS`` in ``project``, until it answers ``/health``; stopped on exit."""
    port = free_port()
    log = project / f"bplab-ui-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen([str(BPLAB), "ui", "--port", str(port), *args], cwd=project, env=env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process, log)
        yield Ui(f"http://127.0.0.1:{port}", process, log)
    finally:
        _stop(process)


def server_env(**settings: str) -> dict[str, str]:
    """This environment without a client's MLflow settings (the project's default store is served)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | settings


@pytest.fixture(scope="module")
def project(tiny_pipeline: TinyPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project root (a folder with ``.dvc/``) holding a copy of the tiny pipeline's store, its default store."""
    root = tmp_path_factory.mktemp("project")
    (root / ".dvc").mkdir()
    shutil.copyfile(tiny_pipeline.store, root / "mlflow.db")  # the snapshot is shared; the server may write
    return root


@pytest.fixture(scope="module")
def mnist(project: Path) -> tuple[str, dict[str, str]]:
    """The ``mnist`` experiment's id, and its runs' ids by name."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("mnist")
    runs = client.search_runs([experiment.experiment_id])
    return experiment.experiment_id, {run.info.run_name: run.info.run_id for run in runs}


@pytest.fixture(scope="module")
def ui(project: Path) -> Iterator[Ui]:
    with bplab_ui(project, env=server_env()) as running:
        yield running


@pytest.fixture(scope="module")
def chromium() -> None:
    if not browser.CHROMIUM.exists():
        unavailable(f"no Chromium at {browser.CHROMIUM}: `make browser` installs Debian's chromium")
    if importlib.util.find_spec("playwright") is None:
        unavailable("Playwright is not installed: `make setup` installs the test extras")


def open_experiment(page: Page, base: str, experiment_id: str) -> str:
    """Open the experiment's plain link, as one pastes it, and return where the UI went."""
    page.goto(f"{base}/#/experiments/{experiment_id}")
    page.wait_for_url(LANDED)
    return page.url


def stored_workflow(page: Page) -> str | None:
    return page.evaluate(f"localStorage.getItem({WORKFLOW_KEY!r})")


@pytest.mark.usefixtures("chromium")
def test_a_fresh_browser_opens_an_experiment_on_its_runs_table(ui: Ui, mnist: tuple[str, dict[str, str]]) -> None:
    experiment_id, runs = mnist
    assert sorted(runs) == MNIST
    with browser.chromium_page() as page:
        assert f"/experiments/{experiment_id}/runs" in open_experiment(page, ui.base, experiment_id)
        browser.wait_for_runs_table(page, MNIST)
        rows = page.get_by_role("grid").get_by_role("row").all_inner_texts()
        assert sorted(name for name in MNIST for row in rows if name in row.split()) == MNIST
        for genai in ("Token Usage", "Detect Issues"):  # the GenAI overview's panels
            assert page.get_by_text(genai).count() == 0, genai
        assert stored_workflow(page) == f'"{MODEL_TRAINING}"'  # as the UI's own switch stores it


@pytest.mark.usefixtures("chromium")
def test_a_browser_that_chose_genai_keeps_it(ui: Ui, mnist: tuple[str, dict[str, str]]) -> None:
    experiment_id, _ = mnist
    with browser.chromium_page() as page:
        open_experiment(page, ui.base, experiment_id)
        # The switch works once the page has rendered: on a loaded machine a click on the sidebar
        # before the runs table is drawn found no handler yet, and nothing navigated.
        browser.wait_for_runs_table(page, MNIST)
        page.get_by_text("GenAI", exact=True).click()  # the sidebar's switch
        page.wait_for_url(re.compile(r"/overview"))
        assert stored_workflow(page) == '"genai"'
        page.goto("about:blank")  # then the link again: the page and its script load anew
        assert f"/experiments/{experiment_id}/overview" in open_experiment(page, ui.base, experiment_id)
        assert stored_workflow(page) == '"genai"'


def test_the_runs_pictures_and_models_are_served(ui: Ui, project: Path, mnist: tuple[str, dict[str, str]]) -> None:
    from mlflow import MlflowClient

    _, runs = mnist
    picture = requests.get(f"{ui.base}/get-artifact", timeout=60,
                           params={"path": "plots/learning_curves.png", "run_uuid": runs["mnist_mlp"]})
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG"), picture.text[:300]
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    model_id = client.get_run(runs["mnist_mlp"]).outputs.model_outputs[0].model_id
    mlmodel = requests.get(f"{ui.base}/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files", timeout=60,
                           params={"artifact_file_path": "MLmodel"})
    assert mlmodel.status_code == 200 and "pytorch" in mlmodel.text, mlmodel.text[:300]


def test_ctrl_c_stops_the_server_and_frees_its_port(ui: Ui) -> None:
    assert _stop(ui.process, signal.SIGINT) == 0, ui.log.read_text()[-3000:]
    assert "Traceback" not in ui.log.read_text()
    port = int(ui.base.rsplit(":", 1)[1])
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ui.base}/health", timeout=5)
    lines = ui.log.read_text().splitlines()
    assert lines[0] == (f"bplab ui: http://127.0.0.1:{port} shows sqlite:///{ui.log.parent / 'mlflow.db'}, "
                        "experiments open on their runs table (Ctrl-C stops)")


@dataclass(frozen=True)
class TeamServer:
    """``bplab ui --basic-auth`` running, and its admin's login."""

    ui: Ui
    admin: tuple[str, str]


def basic_auth_env(root: Path, admin_password: str | None) -> dict[str, str]:
    """The basic-auth configuration in ``root``, as the docs' shared server sets it."""
    (root / "basic_auth.ini").write_text(AUTH_INI.format(users_db=root / "users.db"))
    settings = {"MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
    return server_env(**settings, **({"MLFLOW_AUTH_ADMIN_PASSWORD": admin_password} if admin_password else {}))


@pytest.fixture(scope="module")
def team_server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TeamServer]:
    admin = ("admin", secrets.token_urlsafe(16))
    env = basic_auth_env(tmp_path_factory.mktemp("auth"), admin[1])
    with bplab_ui(project, "--basic-auth", env=env) as running:
        yield TeamServer(running, admin)


def test_basic_auth_refuses_every_page_without_a_login(team_server: TeamServer) -> None:
    base = team_server.ui.base
    for path in ("/", "/api/2.0/mlflow/experiments/search?max_results=5", "/get-artifact?path=x&run_uuid=y"):
        anonymous = requests.get(f"{base}{path}", timeout=60)
        assert anonymous.status_code == 401, (path, anonymous.status_code)
        assert LANDING_SCRIPT not in anonymous.text
        wrong = requests.get(f"{base}{path}", auth=("admin", "wrong"), timeout=60)
        assert wrong.status_code == 401, (path, wrong.status_code)
    page = requests.get(f"{base}/", auth=team_server.admin, timeout=60)
    assert page.status_code == 200 and LANDING_SCRIPT in page.text


@pytest.mark.usefixtures("chromium")
def test_basic_auth_opens_the_same_runs_table_for_a_user_who_logs_in(team_server: TeamServer,
                                                                      mnist: tuple[str, dict[str, str]]) -> None:
    experiment_id, _ = mnist
    with browser.chromium_page(login=team_server.admin) as page:
        assert f"/experiments/{experiment_id}/runs" in open_experiment(page, team_server.ui.base, experiment_id)
        browser.wait_for_runs_table(page, MNIST)


def test_basic_auth_without_an_admin_password_ends_at_once_naming_it(project: Path,
                                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    # As `--app-name basic-auth`: the admin is created before the workers start, so a missing password
    # is one error that ends the command, not workers that fail and are restarted forever.
    env = basic_auth_env(tmp_path_factory.mktemp("no-admin"), admin_password=None)
    process = subprocess.Popen([str(BPLAB), "ui", "--basic-auth", "--workers", "2", "--port", str(free_port())],
                               cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    try:
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        _stop(process, signal.SIGKILL)
        pytest.fail(f"bplab ui --basic-auth went on without an admin password:\n{process.communicate()[0][-3000:]}")
    assert process.returncode != 0
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in output and output.count("needs a password") == 1, output[-3000:]
