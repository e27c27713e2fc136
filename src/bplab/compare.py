"""``python -m bplab.compare``: the same program as ``bplab compare`` (see :mod:`bplab.commands.compare`)."""

from bplab.commands.compare import main

if __name__ == "__main__":
    raise SystemExit(main())
