"""How an evaluation ended: the one status vocabulary of the trainer, the evaluators, the pilot and its reports.

`Status` is a `str` enum, so a status is written to summary.json, the CSV ledgers and the reports as its plain value
("ok", "nan", ...) and compares equal to that string. Two questions are asked of a status:

* `ok`: the run finished and its score is usable;
* `retryable`: the evaluator could not run it (out of memory, or the evaluator itself failed), which says nothing
  about the config, so another evaluator may try again. Every other non-ok status is a verdict on the config
  (its loss became NaN, it diverged, or it ran out of its time).
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    OK = "ok"
    NAN = "nan"  # the loss became NaN or infinite
    DIVERGED = "diverged"  # the loss rose above diverge_factor x its first value
    TIMEOUT = "timeout"  # the wall-time limit ended the run
    OOM = "oom"  # out of memory, even alone
    ERROR = "error"  # the evaluator failed (a crash, an unreadable summary, ...)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def ok(self) -> bool:
        return self is Status.OK

    @property
    def retryable(self) -> bool:
        return self in (Status.OOM, Status.ERROR)
