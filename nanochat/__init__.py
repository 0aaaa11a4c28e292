"""nanochat (synaptic edition): a small GPT with presynaptic attention and postsynaptic plasticity, trained as a
population of P members with stacked parameters (P = 1 is the ordinary single model)."""

from .config import ConfigError, Member, ModelConfig, SynapticConfig, TrainConfig, load_synaptic_config
from .data import Corpus, load_corpus
from .trainer import Budget, MemberResult, PopulationResult, plan_budget, train_population

__all__ = [
    "Budget", "ConfigError", "Corpus", "Member", "MemberResult", "ModelConfig", "PopulationResult",
    "SynapticConfig", "TrainConfig", "load_corpus", "load_synaptic_config", "plan_budget", "train_population",
]
