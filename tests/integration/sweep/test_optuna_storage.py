"""Sweep workers started together on an empty PostgreSQL database: each opens the study's storage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bplab.testing.local_servers import PostgreSQL, postgres_bin
from support.processes import unavailable

OPEN = """
import sys
from pathlib import Path
from bplab.sweep import optuna_study
optuna_study.storage(sys.argv[1], Path("."), "s", 30, optuna_study.Takeovers())
print("opened")
"""


def test_workers_opening_an_empty_database_at_once_all_get_the_storage(tmp_path: Path) -> None:
    # Each creates Optuna's tables and enum types; PostgreSQL refuses all but one of them, with a
    # duplicate key in pg_type or `type "studydirection" already exists` (both seen in the e2e test).
    if postgres_bin() is None:
        unavailable("PostgreSQL is not installed: `make postgres` installs Debian's package")
    with PostgreSQL(database="optuna", role="optuna") as postgres:
        workers = [subprocess.Popen([sys.executable, "-c", OPEN, postgres.uri], cwd=tmp_path, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for _ in range(6)]
        printed = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 6, printed
    assert all(out.strip() == "opened" for out in printed), printed
    assert postgres.password not in "".join(printed)


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/study.db"])
def test_a_database_storage_records_heartbeats(tmp_path: Path, url: str) -> None:
    from bplab.sweep import optuna_study

    where, _ = optuna_study.storage(url.format(tmp=tmp_path), tmp_path, "s", 7, optuna_study.Takeovers())
    assert optuna_study.beats(where) and where.get_heartbeat_interval() == 7
    journal, _ = optuna_study.storage(None, tmp_path, "s", 7, optuna_study.Takeovers())
    assert not optuna_study.beats(journal)
