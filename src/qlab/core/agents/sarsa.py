"""Tabular SARSA on the replica axis: on-policy TD control (Sutton & Barto, 2nd ed., 6.4).

After every step (s, a, r, s') and the next action a' actually taken from s' (epsilon-greedy)

    Q(s, a) += lr * (r + gamma * Q(s', a') - Q(s, a)),

with target r alone when s' is terminal.

When each update is made. The update of step t needs a' = a_{t+1}, which ``act()`` chooses at
step t+1 with that step's epsilon — whatever the schedule (per episode or per step), the ε
the driver passes then is the one a' is drawn with, because a' *is* that action. So ``learn``
keeps step t as a pending update and applies it in the next ``learn`` call, where
``tr.state`` is s' and ``tr.action`` is a'. This is the book's order: a' is chosen from the
Q before the update of (s, a), and the update reads Q(s', a') as it stands. (It is applied
in ``learn`` rather than in ``act`` because only ``learn`` is told which replicas are still
active: a replica the driver stops keeps its pending update unapplied and changes nothing.)
At the end of an episode nothing is left pending:

- terminated: the target is r, applied at once;
- truncated (the time limit): SARSA bootstraps from Q(s', a') with a' the action it would
  take from s'. No further step is taken from s', so ``learn`` draws a' itself, exactly as
  ``act()`` would (the same epsilon-greedy procedure and count of numbers from the replica's
  stream), with the epsilon of the step just taken — the policy the episode ran under.

A step budget (``total_steps``) that cuts an episode mid-way leaves its last step's update
unapplied: its a' is never taken.

Random numbers: ``act()`` takes 2 + A per replica per step (``TabularAgent.act``) and ``learn``
another 2 + A per replica per call, for the truncated case, used or not — so replica k of a
batch is exactly the run of seed k alone.

Q-delta (``train/q_delta``): the mean |ΔQ(s, a)| over the updates made in the episode, one per
step (the pending update of step t is made inside the same episode, at step t + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlab.core.agents import kernels as K
from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.tabular import TabularAgent, Transition, Updates
from qlab.core.checks import check_range
from qlab.core.compiled import CompiledStepper
from qlab.core.statedict import load_array


@dataclass
class SarsaConfig(AgentConfig):
    """Tabular SARSA (on-policy TD control)."""

    name: str = "sarsa"
    init: float = 0.0  # initial Q value

    def check(self) -> None:
        super().check()
        check_range("agent.init", self.init)


class Sarsa(TabularAgent):
    """SARSA for R independent replicas (see the module docstring for when updates happen)."""

    PENDING = ("pending", "pending_state", "pending_action", "pending_reward")  # checkpointed

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int], lr: np.ndarray,
                 gamma: np.ndarray, init: float = 0.0, legal: np.ndarray | None = None) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma, init, legal)
        R = self.replicas
        # Each replica's step whose update waits for its a' (valid where ``pending``).
        self.pending = np.zeros(R, dtype=bool)
        self.pending_state = np.zeros(R, dtype=np.int64)
        self.pending_action = np.zeros(R, dtype=np.int64)
        self.pending_reward = np.zeros(R)
        self.epsilon = np.zeros(R)  # the epsilon of the current step, as act() was given it

    @property
    def kernel(self) -> int | None:
        """The compiled stepper's kernel; None for a subclass (it may learn otherwise)."""
        return K.SARSA if type(self) is Sarsa else None

    def act(self, state: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
        self.epsilon = np.broadcast_to(np.asarray(epsilon, dtype=np.float64),
                                       (self.replicas,)).copy()
        return super().act(state, epsilon)

    def learn(self, tr: Transition) -> Updates:
        abs_delta = np.zeros(self.replicas)
        count = np.zeros(self.replicas)
        # 1. The previous step's update, now that its a' (tr.action, from s' = tr.state) is known.
        rows = self._rows[self.pending & tr.active]
        target = (self.pending_reward[rows]
                  + self.gamma[rows] * self.q[rows, tr.state[rows], tr.action[rows]])
        abs_delta[rows] += self._update(rows, self.pending_state[rows],
                                        self.pending_action[rows], target)
        count[rows] += 1
        self.pending[rows] = False
        # a' for a truncated step: every replica draws it (used or not), from the Q the book
        # chooses it from (the previous step's update made, this step's not yet).
        next_action = TabularAgent.act(self, tr.next_state, self.epsilon)
        # 2. This step: applied now if the episode ends here, else pending until a' is taken.
        active = tr.active
        ends = self._rows[active & tr.done]
        s2 = tr.next_state[ends]
        bootstrap = np.where(tr.terminated[ends], 0.0, self.q[ends, s2, next_action[ends]])
        target = tr.reward[ends] + self.gamma[ends] * bootstrap
        abs_delta[ends] += self._update(ends, tr.state[ends], tr.action[ends], target)
        count[ends] += 1
        going = self._rows[active & ~tr.done]
        self.pending[going] = True
        self.pending_state[going] = tr.state[going]
        self.pending_action[going] = tr.action[going]
        self.pending_reward[going] = tr.reward[going]
        return Updates(abs_delta, count)

    def _update(self, rows: np.ndarray, s: np.ndarray, a: np.ndarray,
                target: np.ndarray) -> np.ndarray:
        """Q(s[i], a[i]) += lr * (target[i] - Q(s[i], a[i])) in replica rows[i]; |ΔQ| per row."""
        old = self.q[rows, s, a]
        step = self.lr[rows] * (target - old)
        self.q[rows, s, a] = old + step
        return np.abs(step)

    def state_dict(self) -> dict:
        """Q and the random stream (the base class's), and the pending updates."""
        return {**super().state_dict(),
                "pending": {k: getattr(self, k).copy() for k in self.PENDING}}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        ranges = {"pending_state": (0, self.n_states - 1),
                  "pending_action": (0, self.n_actions - 1)}
        for k in self.PENDING:
            setattr(self, k, load_array(f"agent.pending.{k}", d["pending"][k], getattr(self, k),
                                        *ranges.get(k, (None, None))))


def build(cfg: SarsaConfig, env, seeds: Sequence[int]) -> Sarsa:
    """The agent for ``env``'s state and action counts, one replica per seed."""
    return Sarsa(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma, init=cfg.init,
                 legal=env.legal)


register(AgentSpec("sarsa", SarsaConfig, build, tabular=True, compiled=CompiledStepper))
