"""What the tests share besides fixtures: running commands (processes), the tiny pipeline and tiny
params (pipeline), a misbehaving HTTP mirror (mirror_server), a second dataset module (wine), and
the scripts torchrun and the registry race start (rank_dirs.py, registry_worker.py).

Fixtures live in the conftest.py files; everything importable lives here, so no test imports a
conftest. Throwaway repository copies and real servers come from :mod:`bplab.testing`.
"""
