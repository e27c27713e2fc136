"""Extending stays green: a new dataset and variant are a module and params.yaml entries, and the
tests that check "every variant" or "every dataset" pass for them without an edit.

In a copy of the repository, scikit-learn's wine data (the module of test_new_dataset.py) and a
variant on it are added, and the fast tests that enumerate variants and datasets run in the copy,
on the copy's own code and params.yaml. A test that keeps its own list of variants, datasets or
their widths fails there.
"""

from __future__ import annotations

import sys
from pathlib import Path

from support.processes import run
from support.wine import copy_with_wine

# The fast tests that enumerate what params.yaml and the catalog hold (test_dvc_contract's last
# check compares dvc.lock with a pipeline this copy never ran).
ENUMERATING = ["tests/unit/models/test_architectures.py", "tests/unit/params/test_schema.py",
               "tests/integration/test_dvc_contract.py",
               "tests/unit/train/test_loop.py::test_every_variant_learns",
               "tests/unit/train/test_optim.py::test_repository_param_groups_are_valid"]


def test_a_new_dataset_and_variant_keep_the_enumerating_tests_green(tmp_path: Path) -> None:
    repo = copy_with_wine(tmp_path / "repo")
    changed = run(["git", "status", "--porcelain"], repo).stdout.split("\n")
    assert sorted(filter(None, changed)) == [" M params.yaml", "?? src/bplab/data/wine.py"]

    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:logging", "-p", "no:cacheprovider", "-x", "-rA",
                  *ENUMERATING, "-k", "not dvc_lock_matches"], repo, check=False)
    assert result.returncode == 0, f"the tests went red for a new dataset:\n{result.stdout[-6000:]}\n{result.stderr}"
    # They ran for the new variant and dataset, on the copy's code: not vacuously green.
    passed = {line.split("::", 1)[1] for line in result.stdout.splitlines() if line.startswith("PASSED ")}
    assert {"test_forward_gives_one_row_per_input_row[wine_mlp]", "test_every_variant_learns[wine_mlp]",
            "test_each_imported_module_is_a_declared_dependency[train@wine_mlp]",
            "test_each_imported_module_is_a_declared_dependency[preprocess@wine]",
            "test_every_variant_in_params_yaml_has_learning_curves"} <= passed
