"""The small sizes the tests train at (CI has two cores), each defined once, as configs and as CLI flags.

* `TRAINER_*`: the trainer's tests (2 layers, width 64, sequences of 64, presynaptic chunks of 16).
* `PILOT_*`: the pilot's tests, which train many populations (1 layer, width 32, sequences of 32, chunks of 8: four
  chunks per sequence, so the presynaptic state really evolves).

`mixed_population` is the population the batch-invariance tests use: different knobs and seeds, several members
drawing stochastic releases.
"""

from nanochat.config import Member, ModelConfig, SynapticConfig, TrainConfig


def model_flags(model: ModelConfig) -> list[str]:
    return ["--n-layer", str(model.n_layer), "--n-embd", str(model.n_embd), "--n-head", str(model.n_head),
            "--n-kv-head", str(model.n_kv_head), "--sequence-len", str(model.sequence_len)]


TRAINER_MODEL = ModelConfig(n_layer=2, n_embd=64, n_head=2, n_kv_head=2, sequence_len=64)
TRAINER_TRAIN = TrainConfig(batch_size=4, max_steps=12, warmup_steps=2)
TRAINER_SYNAPTIC = SynapticConfig(presyn_chunk=16)
TRAINER_FLAGS = [*model_flags(TRAINER_MODEL), "--batch-size", "4", "--warmup-steps", "2"]  # no step cap: add one

PILOT_MODEL = ModelConfig(n_layer=1, n_embd=32, n_head=2, n_kv_head=2, sequence_len=32)
PILOT_TRAIN = TrainConfig(batch_size=2, max_steps=5, warmup_steps=1)
PILOT_SYNAPTIC = SynapticConfig(presyn_chunk=8)
PILOT_FLAGS = [*model_flags(PILOT_MODEL), "--batch-size", "2", "--max-steps", "5", "--warmup-steps", "1", "--quiet"]


def mixed_population(base: SynapticConfig) -> list[Member]:
    """Eight members with different knobs and seeds; several draw stochastic releases."""
    configs = [
        base,
        base.replace(alpha_c=0.95, stochastic_train_frac=0.4),
        base.replace(lambda_loge=3.0, post_fast_lr=1e-2),
        base.replace(stochastic_train_frac=0.0, tau_c=0.7),
        base.replace(init_rrp=1.0, prime_rate=0.2, stochastic_train_frac=0.3),
        base.replace(barrier_strength=0.5, rec_rate=0.2),
        base.replace(post_slow_lr=1e-3, stochastic_train_frac=0.25),
        base.replace(init_rrp=18.0, lambda_loge=0.0),
    ]
    seeds = [123, 123, 7, 123, 8, 7, 123, 9]
    return [Member(c, s) for c, s in zip(configs, seeds)]
