"""CMA-ES Phase 1 pilot over ten synaptic knobs of nanochat, with a batched in-process evaluator.

    from cmaes_inproc import run_pilot
    result = run_pilot(run_id="pilot_cpu_0", generations=2, population_size=4)
    print(result.verdict.label, result.best.params)

`python -m cmaes_inproc --help` is the command-line front end over `run_pilot`.
"""

from .params import PARAM_SPECS, ParamSpec, decode_vector, encode_config
from .pilot import run_pilot
from .recorders import PilotEvent, Recorder
from .records import CandidateRecord, ControlRecord, PilotResult, SensitivityResult, SensitivityRow
from .spec import PilotSpec
from .verdict import Verdict

__all__ = [
    "PARAM_SPECS", "CandidateRecord", "ControlRecord", "ParamSpec", "PilotEvent", "PilotResult", "PilotSpec",
    "Recorder", "SensitivityResult", "SensitivityRow", "Verdict", "decode_vector", "encode_config", "run_pilot",
]
