"""Tabular Q-learning on the replica axis.

``update = step`` (default): Watkins' online Q-learning, after every step
    Q(s, a) += lr * (r + gamma * max_a' Q(s', a') - Q(s, a)), with no bootstrap from a
    terminal s'. Learning starts inside the first episode, so early (random, long) episodes
    end sooner, and each step is one vectorised update over all replicas.
``update = episode``: the source notebook's variant — store the episode, then walk it backwards
    applying the same update; it propagates the goal's reward down the whole path in one
    sweep. Unlike the source notebook, a truncated episode's last step still bootstraps (it did not
    end in a terminal state).

Q-delta, the convergence signal logged for every agent: the mean |ΔQ(s, a)| over the updates
made in an episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlab.core.agents import kernels as K
from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.tabular import EpisodeBuffer, TabularAgent, Transition, Updates
from qlab.core.checks import check_in, check_range
from qlab.core.compiled import CompiledStepper

UPDATES = ("step", "episode")


@dataclass
class TabularQConfig(AgentConfig):
    """Tabular Q-learning."""

    name: str = "tabular_q"
    update: str = "step"  # step: online Watkins Q-learning; episode: the backward sweep
    init: float = 0.0  # initial Q value

    def check(self) -> None:
        super().check()
        check_in("agent.update", self.update, UPDATES)
        check_range("agent.init", self.init)


class TabularQ(TabularAgent):
    """Q-learning for R independent replicas (see the module docstring for the two updates)."""

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int], lr: np.ndarray,
                 gamma: np.ndarray, update: str = "step", init: float = 0.0,
                 legal: np.ndarray | None = None) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma, init, legal)
        if update not in UPDATES:
            raise ValueError(f"agent.update={update!r}: must be one of {', '.join(UPDATES)}")
        self.update = update
        self._episodes = EpisodeBuffer(self.replicas) if update == "episode" else None

    @property
    def kernel(self) -> int | None:
        """The compiled stepper's kernel for this agent; None for a subclass (it may learn
        otherwise: it trains on the numpy path unless it names a kernel of its own)."""
        if type(self) is not TabularQ:
            return None
        return K.Q_STEP if self.update == "step" else K.Q_EPISODE

    def learn(self, tr: Transition) -> Updates:
        if self._episodes is None:
            return self._learn_step(tr)
        self._episodes.push(tr)
        ending = self._rows[tr.done & tr.active]
        if ending.size == 0:
            return Updates(np.zeros(self.replicas), np.zeros(self.replicas))
        return self._learn_episodes(ending)

    def _learn_step(self, tr: Transition) -> Updates:
        r = self._rows
        bootstrap = np.where(tr.terminated, 0.0,
                             self.best_value(self.q[r, tr.next_state], tr.next_state))
        target = tr.reward + self.gamma * bootstrap
        old = self.q[r, tr.state, tr.action]
        step = np.where(tr.active, self.lr * (target - old), 0.0)
        self.q[r, tr.state, tr.action] = old + step
        return Updates(np.abs(step), tr.active.astype(np.float64))

    def _learn_episodes(self, ending: np.ndarray) -> Updates:
        """Backward sweep over the finished episodes of the replicas in ``ending``."""
        ep, lengths = self._episodes.take(ending)
        abs_delta = np.zeros(self.replicas)
        count = np.zeros(self.replicas)
        lr, gamma = self.lr[ending], self.gamma[ending]
        for t in range(int(lengths.max()) - 1, -1, -1):
            m = t < lengths
            rows = ending[m]
            s, a = ep["state"][m, t], ep["action"][m, t]
            s2 = ep["next_state"][m, t]
            nxt = self.best_value(self.q[rows, s2], s2)
            target = ep["reward"][m, t] + gamma[m] * np.where(ep["terminated"][m, t], 0.0, nxt)
            step = lr[m] * (target - self.q[rows, s, a])
            self.q[rows, s, a] += step
            abs_delta[rows] += np.abs(step)
            count[rows] += 1
        return Updates(abs_delta, count)


def build(cfg: TabularQConfig, env, seeds: Sequence[int]) -> TabularQ:
    return TabularQ(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                    update=cfg.update, init=cfg.init, legal=env.legal)


register(AgentSpec("tabular_q", TabularQConfig, build, tabular=True,
                   compiled=CompiledStepper))
