"""Run a stage under torchrun with each rank in its own directory, as ranks on separate nodes are.

Usage: torchrun ... tests/support/rank_dirs.py DIR_OF_RANK_0 DIR_OF_RANK_1 ... -- STAGE_SCRIPT ARG...
"""

from __future__ import annotations

import os
import runpy
import sys

if __name__ == "__main__":
    separator = sys.argv.index("--")
    directories, command = sys.argv[1:separator], sys.argv[separator + 1:]
    os.chdir(directories[int(os.environ["RANK"])])
    sys.argv = command
    runpy.run_path(command[0], run_name="__main__")
