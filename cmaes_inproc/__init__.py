"""CMA-ES Phase 1 pilot over ten synaptic knobs of nanochat, with a batched in-process evaluator.

    from cmaes_inproc import run_pilot
    result = run_pilot(run_id="pilot_cpu_0", generations=2, population_size=4)
    print(result.verdict.label, result.best.params)

`python -m cmaes_inproc --help` is the command-line front end over `run_pilot`. The names below are imported
lazily (PEP 562), so the command line can install its Ctrl-C handling before torch is imported.
"""

from nanochat.lazy import lazy_exports

_EXPORTS = {
    "PARAM_SPECS": "params", "ParamSpec": "params", "decode_vector": "params", "encode_config": "params",
    "run_pilot": "pilot", "PilotEvent": "recorders", "Recorder": "recorders",
    "CandidateRecord": "records", "ControlRecord": "records", "PilotResult": "records",
    "SensitivityResult": "records", "SensitivityRow": "records", "PilotSpec": "spec", "Verdict": "verdict",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
