"""Per-replica random streams consumed in lock-step.

Replica k draws from its own generator seeded by (seed_k, stream), so replica k of a batch
sees exactly the numbers a run of R = 1 with seed k sees: every consumer takes the same
count of numbers per replica on every call, whatever the other replicas are doing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qlab.core.statedict import check_range

# Stream ids keep the consumers of one replica independent of each other.
ENV_STREAM = 0
AGENT_STREAM = 1
NETWORK_STREAM = 2  # DQN weight initialisation
REPLAY_STREAM = 3  # replay-buffer sampling
EVAL_STREAM = 4  # evaluation env copies
REWARD_NOISE_STREAM = 5  # an env's Gaussian reward noise (TabularModel.reward_std)


def derive_seed(seed: int, stream: int, *more: int) -> int:
    """A 32-bit seed for another library's generator (torch, gymnasium), derived from a
    replica's seed and a stream id (plus any further ints, e.g. an env copy's index)."""
    return int(np.random.SeedSequence([int(seed), stream, *map(int, more)]).generate_state(1)[0])


BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_ANY_SEED = np.random.SeedSequence(0)  # overwritten at once by the state


def generator_from_state(state: dict) -> np.random.Generator:
    """A numpy Generator continuing from ``gen.bit_generator.state`` (numpy's own kinds only)."""
    kind = state.get("bit_generator") if isinstance(state, dict) else None
    if kind not in BIT_GENERATORS:
        raise ValueError(f"random generator of kind {kind!r}: expected one of "
                         + ", ".join(BIT_GENERATORS))
    bit = getattr(np.random, kind)(_ANY_SEED)  # a fixed seed: no OS entropy, 2-3x faster
    bit.state = state
    return np.random.Generator(bit)


# The most numbers per replica drawn at a time: ReplicaUniforms' block for up to 256
# replicas, and always the compiled path's (qlab.core.compiled.Streams), so a saved stream
# state — from either — buffers at most this many per replica.
BLOCK_MAX = 4096


class ReplicaUniforms:
    """Uniform [0, 1) numbers, drawn in blocks per replica so hot loops never call R generators."""

    RANGE = (0.0, float(np.nextafter(1.0, 0.0)))  # what a saved buffer may hold

    def __init__(self, seeds: Sequence[int], stream: int, block: int | None = None) -> None:
        self._gens = [np.random.default_rng([int(s), stream]) for s in seeds]
        # Numbers per replica per refill: 4096, fewer for thousands of replicas (the buffer
        # stays near 8 MB). The numbers handed out do not depend on it: each generator's
        # draws follow one another whatever their grouping into blocks.
        self._block = block if block is not None else min(BLOCK_MAX, max(256, 2**20 // len(seeds)))
        self._buf = np.empty((len(self._gens), 0))
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` numbers of every replica's stream, shape (R, n)."""
        if self._pos + n > self._buf.shape[1]:
            size = max(self._block, n)
            fresh = np.stack([self._draw(g, size) for g in self._gens])
            self._buf = np.concatenate([self._buf[:, self._pos:], fresh], axis=1)
            self._pos = 0
        out = self._buf[:, self._pos:self._pos + n]
        self._pos += n
        return out

    @staticmethod
    def _draw(gen: np.random.Generator, size: int) -> np.ndarray:
        return gen.random(size)

    def state(self) -> dict:
        """Everything needed to continue the streams exactly (for checkpoints)."""
        return {"gens": [g.bit_generator.state for g in self._gens],
                "buf": self._buf[:, self._pos:].copy()}

    def load_state(self, state: dict) -> None:
        """Continue from :meth:`state`: the same numbers follow as after the call that took it."""
        gens, buf = state["gens"], np.asarray(state["buf"])
        R, most = len(self._gens), max(self._block, BLOCK_MAX)  # a compiled path's state too
        if (not isinstance(gens, list) or len(gens) != R or buf.ndim != 2
                or buf.shape[0] != R or buf.shape[1] > most):
            raise ValueError(f"random streams of {len(gens)} replica(s), buffer {buf.shape}: "
                             f"expected {R} replica(s), buffer ({R}, <= {most})")
        if buf.size and buf.dtype.kind != "f":
            raise ValueError(f"random stream buffer has dtype {buf.dtype}, expected float64")
        buf = buf.astype(np.float64)
        check_range("random stream buffer", buf, *self.RANGE)
        for g, s in zip(self._gens, gens, strict=True):
            if not isinstance(s, dict) or s.get("bit_generator") != type(g.bit_generator).__name__:
                kind = s.get("bit_generator") if isinstance(s, dict) else type(s).__name__
                raise ValueError(f"random stream of kind {kind!r}: expected "
                                 f"{type(g.bit_generator).__name__}")
            g.bit_generator.state = s
        self._buf, self._pos = buf.copy(), 0


class ReplicaNormals(ReplicaUniforms):
    """Standard normal numbers, per replica, as :class:`ReplicaUniforms` hands out uniforms
    (numpy's own ``standard_normal`` of each replica's generator: no transform of ours whose
    last bits could depend on the machine or the batch)."""

    RANGE = (-40.0, 40.0)  # a standard normal beyond 40 sigma never comes out of numpy

    @staticmethod
    def _draw(gen: np.random.Generator, size: int) -> np.ndarray:
        return gen.standard_normal(size)
