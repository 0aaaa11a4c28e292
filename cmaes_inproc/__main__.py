"""`python -m cmaes_inproc`: the pilot's command line (cli.py), with Ctrl-C and SIGTERM handled from the first moment.

The handlers are installed before torch and numpy are imported, so even an interrupt during start-up ends with one
line and exit status 130 (Ctrl-C) or 143 (SIGTERM), never a traceback; `--resume` continues the run.
"""

from __future__ import annotations

import sys

from nanochat.interrupts import Interrupts, Terminated

PROG = "cmaes_inproc"


def main(argv: list[str] | None = None) -> int:
    interrupts = Interrupts()
    try:
        with interrupts.installed():
            with interrupts.deferred():
                from . import cli
            return cli.main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; continue with --resume", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG}: terminated; continue with --resume", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
