"""Epsilon schedules for epsilon-greedy exploration, vectorised over replicas.

``t`` counts episodes (or env steps, with ``unit = step``) from 0. Every schedule takes
per-replica parameters, so replicas with different decays can train in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlab.core.checks import check_in, check_range

KINDS = ("exponential", "linear", "constant")
UNITS = ("episode", "step")


@dataclass
class ExplorationConfig:
    """Epsilon-greedy schedule."""

    name: str = "exponential"  # exponential | linear | constant
    start: float = 1.0  # epsilon at t = 0, in [0, 1]
    decay: float = 0.995  # exponential: epsilon *= decay per unit, in (0, 1]
    min: float = 0.01  # floor, in [0, start]
    duration: int = 500  # linear: units to anneal from start to min, >= 1
    unit: str = "episode"  # episode | step: what t counts

    def check(self) -> None:
        """Refuse bad values (one line naming the key)."""
        check_in("exploration.name", self.name, KINDS)
        check_in("exploration.unit", self.unit, UNITS)
        check_range("exploration.start", self.start, 0, 1)
        check_range("exploration.decay", self.decay, 0, 1, lo_open=True)
        check_range("exploration.min", self.min, 0, self.start)
        check_range("exploration.duration", self.duration, 1)


@dataclass(frozen=True)
class Schedule:
    """epsilon(t) for every replica.

    kind: ``exponential`` — start * decay**t (the source notebook's: 1.0, times 0.995 after each
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
            # float_power is libm's pow: 0.995**2 == 0.990025 as in the source notebook (numpy's
            # ``**`` takes a SIMD path on AVX-512 machines that can be an ulp off,
            # machine-dependent).
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


def make(cfg, replicas: int) -> Schedule:
    """A schedule from the ``exploration`` config group: each value a number for all replicas
    or an (R,) array of per-replica values (a fused sweep's, see :mod:`qlab.sweeps.fused`)."""
    full = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (replicas,)).copy()  # noqa: E731
    return Schedule(kind=cfg.name, start=full(cfg.start), decay=full(cfg.decay),
                    minimum=full(cfg.min), duration=full(cfg.duration), unit=cfg.unit)
