"""CMA-ES (pycma) in the unit cube, reproducible from one search seed, touching no global state and no files.

pycma's defaults fight reproducibility in three ways, each handled here:

* `seed=0` (and `None`) means "seed from the clock". We never hand pycma a seed at all: its option `randn` (the
  normal sampler) is a picklable object drawing from our own `numpy.random.Generator(PCG64(search_seed))`, and
  `seed=nan` tells pycma not to seed anything. Seed 0 is an ordinary seed here.
* with its default sampler pycma seeds and draws from numpy's *global* generator, which would change the random
  numbers of everything else in the process. A few rarely used code paths of pycma still call `np.random`
  directly, so every call into pycma runs with a private global state swapped in and the caller's restored after.
* it writes `outcmaes/*.dat` into the working directory. `verb_log=0` switches the logger off, and the filename
  prefix points into the run directory anyway in case a future pycma logs regardless.

The whole object pickles (pycma's strategy, our sampler's generator, the private global state), which is what the
per-generation checkpoint stores.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import cma
import numpy as np


class SeededNormal:
    """randn(*shape) for pycma from a private generator (picklable, unlike a lambda or a bound global)."""

    def __init__(self, seed: int):
        self.generator = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0])))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.generator.standard_normal(shape)


class CMASearch:
    """Ask/tell CMA-ES over [0, 1]^n, starting at `x0_unit` with step size `sigma` (a fraction of each range)."""

    def __init__(self, x0_unit: Sequence[float], sigma: float, popsize: int, search_seed: int, log_dir: Path):
        self.options = {
            "popsize": int(popsize),
            "bounds": [0.0, 1.0],
            "seed": float("nan"),  # nan: pycma seeds nothing (see the module docstring)
            "randn": SeededNormal(search_seed),
            "verbose": -9,
            "verb_log": 0,
            "verb_disp": 0,
            "verb_filenameprefix": str(Path(log_dir) / "outcmaes") + "/",
        }
        private_seed = np.random.SeedSequence([search_seed, 1]).generate_state(1)
        self._numpy_state = np.random.RandomState(private_seed).get_state()
        with self._private_numpy(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pycma warns about options we set on purpose
            self.es = cma.CMAEvolutionStrategy(list(map(float, x0_unit)), float(sigma), self.options)

    @contextmanager
    def _private_numpy(self):
        outer = np.random.get_state()
        np.random.set_state(self._numpy_state)
        try:
            yield
        finally:
            self._numpy_state = np.random.get_state()
            np.random.set_state(outer)

    def ask(self) -> np.ndarray:
        """The next generation's points, shape (popsize, n), inside the unit cube."""
        with self._private_numpy():
            points = self.es.ask()
        return np.clip(np.asarray(points, dtype=float), 0.0, 1.0)

    def tell(self, points: np.ndarray, scores: Sequence[float]) -> None:
        with self._private_numpy(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.es.tell([np.asarray(p, dtype=float) for p in points], [float(s) for s in scores])

    @property
    def sigma(self) -> float:
        return float(self.es.sigma)

    def describe(self) -> dict:
        """The options as recorded in run.json (the sampler is described, not serialised)."""
        out = {k: v for k, v in self.options.items() if k not in ("randn", "seed")}
        out["randn"] = "numpy PCG64 generator seeded from search_seed (private; numpy's global RNG untouched)"
        out["cma_version"] = cma.__version__
        return out
