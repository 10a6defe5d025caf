"""Epsilon schedules for epsilon-greedy exploration, vectorised over replicas.

``t`` counts episodes (or env steps, with ``unit = step``) from 0. Every schedule takes
per-replica parameters, so replicas with different decays can train in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Schedule:
    """epsilon(t) for every replica.

    kind: ``exponential`` — start * decay**t (the notebook's: 1.0, times 0.995 after each
    episode); ``linear`` — from start down to ``min`` over ``duration`` units, then flat;
    ``constant`` — start. All are floored at ``min``.
    """

    kind: str
    start: np.ndarray  # (R,)
    decay: np.ndarray  # (R,)
    minimum: np.ndarray  # (R,)
    duration: np.ndarray  # (R,) linear only
    unit: str = "episode"

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        if self.kind == "exponential":
            # float_power is libm's pow: 0.995**2 == 0.990025 as in the notebook (numpy's ``**``
            # takes a SIMD path on AVX-512 machines that can be an ulp off, machine-dependent).
            eps = self.start * np.float_power(self.decay, t)
        elif self.kind == "linear":
            frac = np.minimum(t / self.duration, 1.0)
            eps = self.start + frac * (self.minimum - self.start)
        elif self.kind == "constant":
            eps = np.broadcast_to(self.start, np.shape(t)).astype(np.float64)
        else:
            raise ValueError(f"exploration.name={self.kind!r}: must be exponential, linear or "
                             "constant")
        return np.maximum(eps, self.minimum)


KINDS = ("exponential", "linear", "constant")
UNITS = ("episode", "step")


def make(cfg, replicas: int) -> Schedule:
    """A schedule from the ``exploration`` config group: each value a number for all replicas
    or an (R,) array of per-replica values (a fused sweep's, see :mod:`qlab.sweeps.fused`)."""
    full = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (replicas,)).copy()  # noqa: E731
    return Schedule(kind=cfg.name, start=full(cfg.start), decay=full(cfg.decay),
                    minimum=full(cfg.min), duration=full(cfg.duration), unit=cfg.unit)
