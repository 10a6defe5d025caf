"""The source notebook's tabular Q-learning, kept as it was written, as the speed baseline.

What makes it the source notebook's: the env keeps a (3, H, W) observation array and finds the
agent with ``np.where`` every step; Q is a dict keyed by the pickled (observation, action);
the greedy policy pickles four keys per decision; the update is the episodic backward sweep.
Its bugs that would change the work done are fixed (Q is not rounded), nothing else.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable

import numpy as np


class NotebookGriddy:
    """The source notebook's GriddyEnv: positions live in the observation array."""

    def __init__(self, height: int = 4, width: int = 4, max_steps: int = 1000, seed: int = 0):
        self.h, self.w, self.max_steps = height, width, max_steps
        self.rng = np.random.default_rng(seed)

    def reset(self) -> np.ndarray:
        self.obs = np.zeros((3, self.h, self.w))
        self.obs[0, self.h - 1, self.w - 1] = 1  # goal
        cells = [(r, c) for r in range(self.h) for c in range(self.w)
                 if (r, c) != (self.h - 1, self.w - 1)]
        r, c = cells[self.rng.integers(len(cells))]
        self.obs[2, r, c] = 1
        self.t = 0
        return self.obs.copy()

    def step(self, action: int):
        pos = np.where(self.obs[2] == 1)
        r, c = int(pos[0][0]), int(pos[1][0])
        dr, dc = ((0, -1), (0, 1), (-1, 0), (1, 0))[action]
        r2, c2 = min(max(r + dr, 0), self.h - 1), min(max(c + dc, 0), self.w - 1)
        self.obs[2, r, c] = 0
        self.obs[2, r2, c2] = 1
        goal = np.where(self.obs[0] == 1)
        done = (r2, c2) == (int(goal[0][0]), int(goal[1][0]))
        self.t += 1
        return self.obs.copy(), float(done), done or self.t >= self.max_steps, {}


def _key(obs: np.ndarray, action: int) -> bytes:
    return pickle.dumps(np.array((*np.copy(obs).flatten(), action)))


def greedy(q: dict, obs: np.ndarray) -> tuple[int, float]:
    values = []
    for a in range(4):
        k = _key(obs, a)
        if k not in q:
            q[k] = 0
        values.append(q[k])
    a = int(np.argmax(values))
    return a, values[a]


def train(height: int = 4, width: int = 4, episodes: int = 100, seed: int = 0,
          gamma: float = 0.95, alpha: float = 0.5, decay: float = 0.995,
          min_eps: float = 0.1,
          on_episode: Callable[[int, dict, float], None] | None = None,
          ) -> tuple[dict, int, float]:
    """Train; returns (Q dict, env steps taken, seconds).

    ``on_episode(episode, q, seconds)``, if given, is called after each episode's update with
    the training time so far (the benchmark checks the greedy policy there); the time spent
    in it is not counted."""
    env = NotebookGriddy(height, width, seed=seed)
    rng = np.random.default_rng(seed + 1)
    q: dict = {}
    eps, steps = 1.0, 0
    start = time.perf_counter()
    paused = 0.0
    for episode in range(episodes):
        obs, done, mem = env.reset(), False, []
        while not done:
            action = int(rng.integers(4)) if rng.random() < eps else greedy(q, obs)[0]
            new_obs, reward, done, _ = env.step(action)
            mem.append((obs, action, reward, new_obs))
            obs = new_obs
            steps += 1
        eps = max(min_eps, eps * decay)
        for i, (o, a, r, o2) in reversed(list(enumerate(mem))):
            target = r if i == len(mem) - 1 else r + gamma * greedy(q, o2)[1]
            k = _key(o, a)
            q.setdefault(k, 0)
            q[k] += alpha * (target - q[k])
        if on_episode is not None:
            t = time.perf_counter()
            on_episode(episode, q, t - start - paused)
            paused += time.perf_counter() - t
    return q, steps, time.perf_counter() - start - paused


def greedy_policy_table(q: dict, height: int, width: int) -> np.ndarray:
    """(S,) greedy action per agent cell, as qlab's state index orders them."""
    env = NotebookGriddy(height, width)
    policy = np.zeros(height * width, dtype=np.int64)
    for s in range(height * width):
        obs = np.zeros((3, height, width))
        obs[0, height - 1, width - 1] = 1
        obs.reshape(3, -1)[2, s] = 1
        policy[s] = greedy(q, obs)[0]
    del env
    return policy
