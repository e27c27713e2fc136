"""The model card's text (:mod:`bplab.lineage.card`) where a run's record is partial, and the
tutorial's figures it quotes against the docs' table they come from."""

from __future__ import annotations

import re

from bplab.lineage.card import TUTORIAL_FIGURES, Registered, render
from bplab.lineage.record import PROCESSED, RAW, TEST_SPLIT, TrainingRecord
from bplab.testing.scratch import REPO


def test_tutorial_figures_are_the_docs_what_we_got_table() -> None:
    table = (REPO / "docs/variants.md").read_text().split("## What we got", 1)[1]
    rows = re.findall(r"^\| (\w+) \| [^|]+ \| [^|]+ \| ([^|]+) \|$", table, re.MULTILINE)
    documented = {}
    for variant, cell in rows[1:]:  # the header row first
        scores = dict(re.findall(r"(acc|RMSE|R²) (-?[\d.]+)", cell))
        documented[variant] = {f"test_{name.lower().replace('²', '2')}": float(value) for name, value in scores.items()}
    assert documented == TUTORIAL_FIGURES


def record(**changes) -> TrainingRecord:
    values = dict(run_id="0123456789abcdef0123456789abcdef", variant="boston_module", dataset="boston",
                  status="FINISHED", start_time=0, params={"model.arch": "mlp_model", "model.hidden": "[10, 10]",
                                                           "n_features": "13", "n_parameters": "261", "lr": "0.001"},
                  code={}, data={RAW: "aa.dir", PROCESSED: "bb.dir", TEST_SPLIT: "run-test"},
                  data_paths={RAW: "data/raw/boston", PROCESSED: "data/processed/boston"}, environment={},
                  metrics={"val_rmse": 4.5, "test_rmse": 5.25}, git_commit="c0ffee", git_dirty=True,
                  git_changes=[f" M src/file{i}.py" for i in range(12)])
    return TrainingRecord(**(values | changes))


def test_card_of_a_partial_record_says_what_is_missing_and_how_far_it_is_true() -> None:
    unregistered = render(record(), None)
    assert unregistered.startswith("# boston_module, run 01234567 (not registered)\n")
    assert "| registered model | none: the run was not evaluated |" in unregistered
    assert "load_model" not in unregistered  # nothing registered to load
    assert "| train split |  | not recorded |" in unregistered and "| stage code | not recorded |" in unregistered
    assert "Dataset **boston** (regression): split sizes not recorded." in unregistered
    assert "- Network: `mlp_model`, hidden layers [10, 10]; 13 input features, 261 parameters" in unregistered
    # ten changed files listed, the rest counted
    assert "`M src/file9.py` and 2 more |" in unregistered and "file10" not in unregistered

    version = Registered("boston", "7", {"test_rmse": "5.5", "test_digest": "version-test"})
    stored = render(record(), version)
    assert stored.startswith("# boston version 7: boston_module\n")
    assert "| rmse | 4.5 | 5.5 | 5.2 |" in stored  # the version's own test score, the run's validation score
    assert "`version-test` (content digest)" in stored  # the split this version was scored on
    assert "| aliases | as the registry shows them" in stored
    assert "| aliases | `@champion` (now) |" in render(record(), Registered("boston", "7", {}, ("champion",)))
