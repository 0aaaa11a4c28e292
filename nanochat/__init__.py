"""nanochat (synaptic edition): a small GPT with presynaptic attention and postsynaptic plasticity, trained as a
population of P members with stacked parameters (P = 1 is the ordinary single model).

The names below are imported lazily (PEP 562), so `python -m nanochat.train` can install its Ctrl-C/SIGTERM
handling and check its flags before torch is imported.
"""

from .lazy import lazy_exports

_EXPORTS = {
    "ConfigError": "config", "Member": "config", "ModelConfig": "config", "SynapticConfig": "config",
    "TrainConfig": "config", "load_synaptic_config": "config", "MAX_SEED": "config", "check_seed": "config",
    "Corpus": "data", "load_corpus": "data", "check_corpus_fits": "data",
    "Budget": "trainer", "MemberResult": "trainer", "PopulationResult": "trainer", "plan_budget": "trainer",
    "train_population": "trainer",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
