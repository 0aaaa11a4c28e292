"""Every searched knob is alive: moving it alone to an edge of its range changes the score (same seed).

The one-at-a-time sweep runs as one population of 21 members (the baseline, then each knob at each edge), on a
model and budget small enough for CI. A knob that changes nothing is a bug in the model's wiring (a priming law that
ignored the reserve once left rec_rate bit-for-bit dead), not a finding. README shows the same table at the
default budget and baseline size (`python -m cmaes_inproc --sensitivity`).
"""

from nanochat.config import Member, TrainConfig
from nanochat.trainer import train_population
from cmaes_inproc.params import PARAM_SPECS

MIN_RELATIVE_CHANGE = 1e-3


def test_every_knob_changes_the_score(corpus, tiny_model, tiny_synaptic):
    train = TrainConfig(batch_size=4, max_steps=100, warmup_steps=5)
    members = [Member(tiny_synaptic, 123)]
    edges = []
    for spec in PARAM_SPECS:
        for x in (spec.low, spec.high):
            edges.append((spec.name, spec.decode(x)))
            members.append(Member(tiny_synaptic.replace(**{spec.name: spec.decode(x)}), 123))
    result = train_population(members, tiny_model, train, corpus)
    assert all(m.ok for m in result.members), [m.failure_reason for m in result.members if not m.ok]
    base = result.members[0].score(3)
    effect: dict[str, float] = {}
    for (name, _), member in zip(edges, result.members[1:]):
        rel = abs(member.score(3) - base) / base
        effect[name] = max(effect.get(name, 0.0), rel)
    dead = {name: rel for name, rel in effect.items() if rel < MIN_RELATIVE_CHANGE}
    assert len(effect) == 10
    assert not dead, f"knobs with < {MIN_RELATIVE_CHANGE:.0e} relative effect at both edges: {dead}"
