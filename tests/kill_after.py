"""Test-only runner: `python tests/kill_after.py N <cmaes_inproc flags>` runs the pilot's CLI and SIGKILLs its own
process the moment the N-th evaluation is written to the ledgers: no cleanup, no flush, like a job killed by a
scheduler. The production code knows nothing of this; the runner wraps the ledger recorder from outside."""

import os
import signal
import sys

from cmaes_inproc import recorders
from cmaes_inproc.__main__ import main

limit = int(sys.argv[1])
written = 0
original = recorders.LedgerWriter.evaluated


def evaluated(self, record):
    global written
    original(self, record)
    written += 1
    if written >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


recorders.LedgerWriter.evaluated = evaluated
sys.exit(main(sys.argv[2:]))
