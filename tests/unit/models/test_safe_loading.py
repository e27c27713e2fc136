"""No load in the pipeline runs code: files from DVC remotes and other machines are data, never programs.

Each crafted file below carries a pickle whose ``__reduce__`` would create a marker file. The
pipeline must refuse it, naming the file, before anything is recorded; the marker must never
appear. The stages run in this process (``stage_in_process``, under the ``workspace`` fixture,
which resets MLflow after): a payload that ran would create the marker here as in a child. A
last check reads the source: the one ``torch.load`` in ``src/`` and ``stages/`` passes
``weights_only=True``, and nothing else unpickles.
"""

from __future__ import annotations

import ast
import os
import shlex
from pathlib import Path

import pytest
import torch

from bplab.params.schema import Params
from bplab.paths import checkpoint_file, metrics_file, model_dir
from bplab.pipeline.train_stage import train
from bplab.testing.scratch import REPO
from support.pipeline import mlflow_client, tiny
from support.processes import stage_in_process

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return (os.system, (self.command,))


def _prove_it_runs_code(path: Path, marker: Path) -> None:
    """The crafted file is a real threat: the unsafe loader does run its payload."""
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("file_name", ["model.pt", "state_dict.pt"])
def test_evaluate_refuses_a_saved_model_that_would_run_code(workspace: Path, params: Params, file_name: str) -> None:
    small = tiny(params, "boston_module", epochs=2, batch_size=16)
    record = train("boston_module", small)
    marker = workspace / "pwned"
    crafted = model_dir("boston_module") / file_name
    torch.save(_Payload(marker), crafted)  # what a tampered file on a DVC remote would hold

    result = stage_in_process("evaluate", "boston_module", "--params", str(REPO / "params.yaml"), cwd=workspace)

    assert result.returncode == 2, result.stderr
    assert f"evaluate@boston_module: error: models/boston_module/{file_name}: refused" in result.stderr
    assert "(it names posix.system); loading it could run code" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    logged = mlflow_client().get_run(record["run_id"])
    assert not {m for m in logged.data.metrics if m.startswith("test_") or m == "saved_forms_max_abs_diff"}
    assert logged.info.status == "FINISHED"  # the training's status: evaluate's failure is its own
    assert not metrics_file("boston_module").exists()
    _prove_it_runs_code(crafted, marker)


def test_training_ignores_a_checkpoint_that_would_run_code(workspace: Path) -> None:
    marker = workspace / "pwned"
    crafted = checkpoint_file("flower_logreg")
    crafted.parent.mkdir(parents=True)
    torch.save({"fingerprint": _Payload(marker)}, crafted)
    original = crafted.read_bytes()

    result = stage_in_process("train", "flower_logreg", "--params", str(REPO / "params.yaml"), cwd=workspace)

    assert result.returncode == 0, result.stderr
    assert not marker.exists()
    assert (f"unreadable checkpoint: {crafted}: refused: not a training checkpoint "
            "(it names posix.system); loading it could run code; kept as ") in result.stderr
    [kept] = crafted.parent.glob("flower_logreg.pt.set-aside-*")  # set aside, not deleted: it is evidence
    assert kept.read_bytes() == original
    _prove_it_runs_code(kept, marker)


def test_every_architecture_loads_back_through_the_allowlist(tmp_path: Path, params: Params) -> None:
    from bplab.models.architectures import build_model
    from bplab.models.safe_load import load_whole_model

    widths = {"mnist": (784, 10), "boston": (13, 1), "flower": (2, 1)}
    for name, variant in params.train.items():
        n_in, n_out = widths[variant.dataset]
        model = build_model(variant.model, n_in, n_out).eval()
        path = tmp_path / f"{name}.pt"
        torch.save(model, path)
        loaded = load_whole_model(path)
        x = torch.randn(4, n_in)
        assert type(loaded) is type(model), name
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), name


def test_a_file_holding_no_model_is_refused_naming_it(tmp_path: Path) -> None:
    from bplab.errors import ModelFileError
    from bplab.models.safe_load import load_state_dict, load_whole_model

    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ModelFileError, match=rf"{path}: refused: holds a dict, not one of this project's models"):
        load_whole_model(path)
    torch.save(torch.nn.GRU(2, 2), path)  # a real torch module, but outside the allowlist
    with pytest.raises(ModelFileError, match=r"refused: .*\(it names torch.nn.modules.rnn.GRU\)"):
        load_whole_model(path)
    torch.save({"w": 3}, path)
    with pytest.raises(ModelFileError, match="not a mapping of parameter names to tensors"):
        load_state_dict(path)
    path.write_bytes(b"not a torch file")
    with pytest.raises(ModelFileError, match=rf"{path}: refused"):
        load_state_dict(path)


def _calls(tree: ast.AST, module: str, function: str) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr == function
            and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_load_in_the_pipeline_can_run_code() -> None:
    import yaml

    from bplab.params import yaml12

    problems = []
    sources = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "stages").glob("*.py"))
    assert len(sources) > 20
    torch_loads = []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(REPO)
        for call in _calls(tree, "torch", "load"):
            torch_loads.append(str(where))
            flag = _keyword(call, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
        for function in ("load", "loads", "Unpickler"):
            problems += [f"{where}:{c.lineno}: pickle.{function}" for c in _calls(tree, "pickle", function)]
        for call in _calls(tree, "yaml", "load"):
            loader = _keyword(call, "Loader")
            named = (getattr(yaml12, loader.id, None) or getattr(yaml, loader.id, object)) if isinstance(
                loader, ast.Name) else object
            # libyaml's CSafeLoader is CParser + SafeConstructor, not a SafeLoader subclass
            safe = issubclass(named, yaml.SafeLoader) or named is getattr(yaml, "CSafeLoader", None)
            if not safe:
                problems.append(f"{where}:{call.lineno}: yaml.load without a SafeLoader")
        for call in _calls(tree, "np", "load"):
            flag = _keyword(call, "allow_pickle")
            if not (isinstance(flag, ast.Constant) and flag.value is False):
                problems.append(f"{where}:{call.lineno}: np.load without allow_pickle=False")
        if "weights_only=False" in path.read_text():
            problems.append(f"{where}: mentions weights_only=False")
    assert torch_loads == ["src/bplab/models/safe_load.py"]  # one home for reading torch files
    assert problems == []
