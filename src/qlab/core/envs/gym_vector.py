"""R copies of a gymnasium env without a known model (CartPole), behind the interface of
:class:`~qlab.core.envs.vector.TabularVecEnv`: states are the flattened float32 observations.

Replica k's env is seeded with ``seeds[k]`` on its first reset and runs on from there, so
its episodes depend on its seed alone. Like the tabular vector env it does not auto-reset:
``step`` returns the true last observation of an episode and the runner calls
:meth:`restart` for the replicas that finished. Episodes are truncated by the env's own
``TimeLimit`` (``max_steps`` overrides its length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from qlab.core.envs.vector import Step
from qlab.core.rng import generator_from_state
from qlab.core.statedict import load_array

_PLAIN = (bool, int, float, str, type(None))


def env_state(env: gymnasium.Env) -> dict:
    """A gymnasium env's whole state as plain values: its ``np_random`` state, every plain
    attribute (numbers, strings, None) and numpy array of the unwrapped env (CartPole's
    ``state``, ``steps_beyond_terminated``, ...), and each wrapper's plain attributes
    (TimeLimit's ``_elapsed_steps``, OrderEnforcing's ``_has_reset``, the passive checker's
    flags). Other attributes (spaces, render handles) come from the constructor, unsaved."""
    u = env.unwrapped
    attrs, arrays = {}, {}
    for name, v in vars(u).items():
        if name.startswith("_np_random"):
            continue
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, _PLAIN):
            attrs[name] = v
        elif isinstance(v, np.ndarray) and v.dtype != object:
            arrays[name] = v.copy()
    rng = getattr(u, "_np_random", None)
    wrappers, w, i = {}, env, 0
    while isinstance(w, gymnasium.Wrapper):
        wrappers[str(i)] = {k: v.item() if isinstance(v, np.generic) else v
                            for k, v in vars(w).items()
                            if isinstance(v, (*_PLAIN, np.generic)) and not k.startswith("__")}
        w, i = w.env, i + 1
    return {"rng": None if rng is None else rng.bit_generator.state, "attrs": attrs,
            "arrays": arrays, "wrappers": wrappers}


def _check_plain(name: str, value: Any, old: Any) -> None:
    """A saved plain attribute must have the type of the one it replaces (or either is None:
    e.g. CartPole's ``steps_beyond_terminated``); strings are configuration (a render mode,
    a map name) and must not change; counters must not be negative."""
    if isinstance(old, np.generic):
        old = old.item()
    if old is None and isinstance(value, np.ndarray):  # e.g. CartPole's state before reset
        if value.dtype.kind not in "biuf" or value.ndim != 1 or not np.isfinite(value).all():
            raise ValueError(f"{name} has shape {value.shape} and dtype {value.dtype}, "
                             "expected a finite 1-d numeric array")
        return
    if not isinstance(value, _PLAIN) or (value is not None and old is not None
                                         and type(value) is not type(old)):
        raise ValueError(f"{name} is a {type(value).__name__}, expected "
                         f"{type(old).__name__}")
    if isinstance(old, str) and value != old:
        raise ValueError(f"{name} = {value!r}, this env has {old!r}")
    if type(value) is int and value < 0 and (old is None or old >= 0):
        raise ValueError(f"{name} = {value} is negative")


def load_env_state(env: gymnasium.Env, d: Mapping[str, Any], name: str = "env") -> None:
    """Put :func:`env_state` back into an env built the same way."""
    u = env.unwrapped
    if d["rng"] is not None:
        u.np_random = generator_from_state(d["rng"])
    for key, v in {**d["attrs"], **d["arrays"]}.items():
        if key not in vars(u):
            raise ValueError(f"{name}: {type(u).__name__} has no attribute {key!r}")
        old = getattr(u, key)
        if isinstance(v, np.ndarray) and isinstance(old, np.ndarray):
            v = load_array(f"{name}.{key}", v, old)
        else:
            _check_plain(f"{name}.{key}", v, old)
        setattr(u, key, v)
    w, i = env, 0
    while isinstance(w, gymnasium.Wrapper):
        for k, v in d["wrappers"].get(str(i), {}).items():
            if not hasattr(w, k):
                raise ValueError(f"{name}: wrapper {type(w).__name__} has no attribute {k!r}")
            _check_plain(f"{name}.{type(w).__name__}.{k}", v, getattr(w, k))
            setattr(w, k, v)
        if getattr(w, "checked_data_reuse", True) is False:
            w.checked_data_reuse = True  # the passive checker's one-off warning: its data is gone
        w, i = w.env, i + 1


def make_gym(env_id: str, max_steps: int | None = None,
             kwargs: Mapping[str, Any] | None = None) -> gymnasium.Env:
    """One gymnasium env; ``max_steps`` overrides the length of its TimeLimit."""
    extra = dict(kwargs or {})
    if max_steps is not None:
        extra["max_episode_steps"] = int(max_steps)
    return gymnasium.make(env_id, **extra)


class GymVecEnv:
    """``len(seeds)`` copies of ``gymnasium.make(env_id, **kwargs)``; replica k seeded with
    ``seeds[k]``. ``model`` and ``observations`` are None: there is no state table."""

    model = None
    observations = None
    n_states = None

    def __init__(self, env_id: str, seeds: Sequence[int], max_steps: int | None = None,
                 kwargs: Mapping[str, Any] | None = None) -> None:
        self.envs = [make_gym(env_id, max_steps, kwargs) for _ in seeds]
        self.seeds = [int(s) for s in seeds]
        self.num_envs = len(self.envs)
        space = self.envs[0].action_space
        if not isinstance(space, spaces.Discrete):
            raise ValueError(f"env.id={env_id!r}: action space {space} is not Discrete; "
                             "value-based agents need discrete actions")
        ob_space = self.envs[0].observation_space
        if not isinstance(ob_space, spaces.Box):
            raise ValueError(f"env.id={env_id!r}: observation space {ob_space} is not a Box")
        self.n_actions = int(space.n)
        self.obs_dim = int(np.prod(ob_space.shape))
        self.state = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        self._seeded = False

    def _reset(self, k: int) -> None:
        seed = None if self._seeded else self.seeds[k]
        obs, _ = self.envs[k].reset(seed=seed)
        self.state[k] = np.asarray(obs, dtype=np.float32).reshape(-1)

    def reset(self) -> np.ndarray:
        """Start every replica afresh (seeding each on the first call); observations (R, D)."""
        for k in range(self.num_envs):
            self._reset(k)
        self._seeded = True
        return self.state.copy()

    def step(self, actions: np.ndarray) -> Step:
        """Act in every replica (no auto-reset; see :meth:`restart`)."""
        R = self.num_envs
        reward = np.zeros(R)
        terminated = np.zeros(R, dtype=bool)
        truncated = np.zeros(R, dtype=bool)
        for k, env in enumerate(self.envs):
            obs, r, term, trunc, _ = env.step(int(actions[k]))
            self.state[k] = np.asarray(obs, dtype=np.float32).reshape(-1)
            reward[k], terminated[k], truncated[k] = r, term, trunc
        return Step(self.state.copy(), reward, terminated, truncated & ~terminated)

    def restart(self, mask: np.ndarray) -> np.ndarray:
        """Reset the replicas in ``mask`` (after :meth:`step`); observations of all (R, D)."""
        for k in np.flatnonzero(mask):
            self._reset(int(k))
        return self.state.copy()

    def close(self) -> None:
        for env in self.envs:
            env.close()

    def state_dict(self) -> dict:
        """Current observations, whether the first (seeding) reset happened, each copy's
        whole state (:func:`env_state`), mid-episode included."""
        return {"state": self.state.copy(), "seeded": self._seeded,
                "envs": {str(k): env_state(env) for k, env in enumerate(self.envs)}}

    def load_state_dict(self, d: dict) -> None:
        self.state = load_array("env.state", d["state"], self.state)
        self._seeded = bool(d["seeded"])
        if set(d["envs"]) != {str(k) for k in range(self.num_envs)}:
            raise ValueError(f"env holds {len(d['envs'])} copies, expected {self.num_envs}")
        for k, env in enumerate(self.envs):
            load_env_state(env, d["envs"][str(k)], f"env[{k}]")
