"""A killed `dvc repro` of a training, then a code change: the checkpoint is set aside, nothing
crashes.
"""

from __future__ import annotations

from pathlib import Path

from bplab.testing.scratch import set_params, stage_env
from bplab.timings import FAULT_ENV


def test_a_changed_network_sets_the_checkpoint_aside_instead_of_crashing(pipeline_clone: Path) -> None:
    from support.processes import run

    repo = pipeline_clone  # the flower's data prepared
    (repo / "checkpoints/flower_module.pt").unlink()  # the baseline's finished training: none to start from
    set_params(repo, {"train.flower_module.epochs": 20000})
    killed = run(["dvc", "repro", "train@flower_module"], repo, check=False,
                 env=stage_env(repo, **{FAULT_ENV: "train@flower_module/checkpoints:2:end"}))
    assert killed.returncode != 0 and (repo / "checkpoints/flower_module.pt").exists()
    networks = repo / "src/bplab/models/networks.py"  # the clone runs its own code: a real code change
    source = networks.read_text()
    changed = source.replace("self.layer3 = nn.Linear(num_hidden, num_output)",
                             "self.layer3 = nn.Linear(num_hidden, num_output, bias=False)")
    assert changed != source
    networks.write_text(changed)  # the params stay those of the killed start

    again = run(["dvc", "repro", "train@flower_module"], repo, timeout=600)

    printed = again.stderr + again.stdout
    # the code is in the fingerprint too (the stage's code deps): no resuming across a code change
    assert "was trained with other model, code; kept as checkpoints/flower_module.pt.set-aside-" in printed
    assert "Traceback" not in printed
