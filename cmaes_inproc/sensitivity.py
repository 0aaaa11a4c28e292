"""The one-at-a-time sensitivity sweep: every knob at each edge of its range against the baseline, as one run.

Each of the 20 edge configs changes one field of the base config and nothing else (no encode/decode round trip of
the other knobs, which could move a log10 knob by an ulp) and is trained on the eval seed; the baseline is trained
on the eval seed and the noise seeds. All of it is requested at once, so the batched evaluator trains it as a few
large populations. The result is a `SensitivityResult`: a row per edge with its score change against the baseline,
and the baseline's seed noise for scale.
"""

from __future__ import annotations

import math
import statistics

from nanochat.status import Status

from .params import PARAM_SPECS
from .records import PilotResult, SensitivityResult, SensitivityRow
from .run import ControlSlot, Run

EDGES = ("low", "high")


def edge_label(knob: str, edge: str) -> str:
    return f"{knob}_{edge}"


def run_sensitivity(run: Run, hooks) -> PilotResult:
    spec, layout, history = run.spec, run.layout, run.history
    hooks.started(len(spec.seeds) + len(EDGES) * len(PARAM_SPECS))
    requests = run.baseline_requests()
    for ps in PARAM_SPECS:
        for edge in EDGES:
            config = spec.base_synaptic.replace(**{ps.name: ps.decode(ps.low if edge == "low" else ps.high)})
            requests += run.control_requests(ControlSlot("sensitivity", edge_label(ps.name, edge)),
                                             layout.sensitivity_dir(ps.name, edge), config, [spec.eval_seed])
    run.evaluate(requests, hooks)

    baseline = history.control_by_seed("baseline")
    base = baseline[spec.eval_seed].score if baseline[spec.eval_seed].status.ok else math.nan
    rows = []
    for ps in PARAM_SPECS:
        for edge in EDGES:
            r = history.control_by_seed("sensitivity", edge_label(ps.name, edge))[spec.eval_seed]
            score = r.score if r.status.ok else math.nan
            delta = score - base
            rows.append(SensitivityRow(knob=ps.name, edge=edge, value=ps.decode(ps.low if edge == "low" else ps.high),
                                       score=score, delta=delta, rel_delta=delta / abs(base) if base else math.nan,
                                       status=Status(r.status)))
    ok = [c.score for c in baseline.values() if c.status.ok]
    noise = statistics.stdev(ok) / statistics.fmean(ok) if len(ok) > 1 else math.nan
    result = PilotResult(layout.root, spec, [], history.controls(),
                         sensitivity=SensitivityResult(rows, base, noise))
    hooks.finished(result)
    return result
