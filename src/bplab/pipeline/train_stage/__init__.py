"""The ``train@<variant>`` stage: prepare (:mod:`.prepare`: params, data, model, resume), fit
(:mod:`.fit`: the loop, logged as it goes), publish (:mod:`.publish`: MLflow's model, then the outputs).

Outputs, written only after training and logging succeeded (staged, then renamed into place):

- ``models/<variant>/model.pt``: the whole model, saved by ``torch.save`` as in the tutorials
  (load it with :func:`bplab.models.safe_load.load_whole_model`, which runs no code from the file);
- ``models/<variant>/state_dict.pt``: the weights (:func:`bplab.models.safe_load.load_state_dict`);
- ``models/<variant>/run.json``: the MLflow run id and the logged model's URI;
- ``history/<variant>.csv``: per-epoch metrics, a DVC plots file.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bplab.params.schema import Params
from bplab.pipeline.train_stage.fit import fit_recorded, fit_share
from bplab.pipeline.train_stage.prepare import prepare, resume
from bplab.pipeline.train_stage.publish import publish
from bplab.timings import StageClock
from bplab.tracking.recorder import Recorder


def train(name: str, params: Params, root: Path = Path(".")) -> dict[str, Any] | None:
    """Train variant ``name`` per params.yaml, log it to MLflow, and write its DVC outputs.

    Resumes from ``checkpoints/<variant>.pt`` when an earlier start with the same params was
    interrupted. Under ``torchrun`` every rank trains its share and rank 0 alone logs and writes.
    Returns the contents of ``run.json`` (run id, experiment id, model URI, final metrics); None
    on the other ranks.
    """
    from bplab.train import distributed

    clock = StageClock(f"train@{name}")
    with distributed.joined(params.device) as placement:
        # A rank that fails here (its own data, disk or device) ends every rank, with its error.
        job = distributed.together(placement, lambda: prepare(name, params, placement, root))
        resume(job)
        if not placement.is_main:  # the other ranks train their shares; rank 0 logs and writes
            fit_share(job)
            return None
        where = f" on {placement.world} ranks" if placement.world > 1 else ""
        print(f"train@{name}: {job.why}; device {placement.device}{where}", file=sys.stderr)
        recording = job.recording
        with ExitStack() as run:
            with clock.phase("mlflow_setup"):
                recorder = run.enter_context(Recorder.run(recording.dataset, name, recording.tags,
                                                          run_id=job.resume and job.resume.run_id,
                                                          system_metrics_s=recording.system_metrics_s))
            history, stop = fit_recorded(job, recorder, clock)
            record = publish(job, history, stop, recorder, clock, root)
    clock.finish()
    return record
