"""Ground truth for finite MDPs: value iteration (Q*, V*, optimal actions) and exact policy
evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qlab.core.envs.model import TabularModel


@dataclass(frozen=True)
class Solution:
    """The optimal action values of a model under one discount."""

    q: np.ndarray  # (S, A) Q* (an illegal action: its placeholder outcome's value)
    v: np.ndarray  # (S,) V* = max of Q* over the legal actions
    optimal: np.ndarray  # (S, A) bool: legal actions within ``atol`` of the best

    def is_optimal(self, policy: np.ndarray) -> np.ndarray:
        """(..., S) bool: whether the action ``policy[..., s]`` is optimal in state s."""
        opt = np.broadcast_to(self.optimal, policy.shape + self.optimal.shape[-1:])
        return np.take_along_axis(opt, policy[..., None], axis=-1)[..., 0]


def _backup(model: TabularModel, v: np.ndarray, gamma: float) -> np.ndarray:
    """Q(s, a) = E[r + gamma * V(s') * (not terminal)]."""
    cont = np.where(model.terminal, 0.0, v[model.next_state])
    return (model.prob * (model.reward + gamma * cont)).sum(-1)


def value_iteration(model: TabularModel, gamma: float, horizon: int | None = None,
                    tol: float = 1e-12, max_iter: int = 1_000_000,
                    atol: float = 1e-9) -> Solution:
    """Q* by value iteration, maximising over each state's legal actions (``model.legal``).

    With ``horizon`` None the infinite-horizon fixed point (to ``tol``); with ``horizon = H``
    the optimal values of the first step of an H-step episode (finite-horizon backups).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma}: must be in [0, 1]")
    legal = model.action_mask
    v = np.zeros(model.n_states)
    steps = horizon if horizon is not None else max_iter
    q = _backup(model, v, gamma)
    for _ in range(steps):
        q = _backup(model, v, gamma)
        v_new = legal_max(q, legal)
        delta = np.abs(v_new - v).max()
        v = v_new
        if horizon is None and delta < tol:
            break
    else:
        if horizon is None:
            raise RuntimeError(f"value iteration did not converge in {max_iter} iterations")
    optimal = legal & np.isclose(q, legal_max(q, legal)[:, None], rtol=0.0, atol=atol)
    return Solution(q=q, v=v, optimal=optimal)


def legal_max(q: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """(..., S) the largest value of q (..., S, A) over each state's legal actions."""
    return np.where(legal, q, -np.inf).max(-1)


def legal_argmax(q: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """(..., S) the first legal action with the largest value of q (..., S, A)."""
    return np.where(legal, q, -np.inf).argmax(-1)


def policy_value(model: TabularModel, policy: np.ndarray, gamma: float = 1.0,
                 horizon: int | None = None, tol: float = 1e-12,
                 max_iter: int = 100_000) -> np.ndarray:
    """Exact value V^pi(s) of a deterministic policy (S,) from every state.

    ``horizon`` defaults to the model's ``max_steps``: the expected return of an episode the
    env would actually run. Without either, iterates to the fixed point.
    """
    horizon = model.max_steps if horizon is None else horizon
    rows = np.arange(model.n_states)
    p = model.prob[rows, policy]
    r = (p * model.reward[rows, policy]).sum(-1)
    nxt = model.next_state[rows, policy]
    live = p * ~model.terminal[rows, policy]
    v = np.zeros(model.n_states)
    for _ in range(horizon if horizon is not None else max_iter):
        v_new = r + gamma * (live * v[nxt]).sum(-1)
        if np.array_equal(v_new, v) or (horizon is None and np.abs(v_new - v).max() < tol):
            v = v_new
            break
        v = v_new
    return v


def expected_return(model: TabularModel, policy: np.ndarray, gamma: float = 1.0) -> float:
    """The policy's expected return from the start distribution, within the model's horizon."""
    return float(model.initial @ policy_value(model, policy, gamma))


def policy_q(model: TabularModel, policy: np.ndarray, gamma: float,
             horizon: int | None = None) -> np.ndarray:
    """Exact action values Q^pi (S, A) of a stochastic policy ``policy`` (S, A), each row a
    distribution over actions (e.g. ``np.full((S, A), 1 / A)``, the uniform random policy).

    Q^pi(s, a) is the expected discounted return of taking a in s and following pi after.
    With ``horizon = H`` it is the return within H steps (H backups from zero); with
    ``horizon`` None, the infinite-horizon values, solved exactly as the linear system
    V = r_pi + gamma P_pi V (for gamma = 1 every state must reach a terminal under pi).
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma}: must be in [0, 1]")
    policy = np.asarray(policy, dtype=float)
    if policy.shape != (model.n_states, model.n_actions):
        raise ValueError(f"policy of shape {policy.shape}: must be (S, A) = "
                         f"{(model.n_states, model.n_actions)}")
    if (policy < 0).any() or not np.allclose(policy.sum(1), 1.0):
        raise ValueError("policy: each row must be a probability distribution over actions")
    if horizon is not None:
        v = np.zeros(model.n_states)
        q = _backup(model, v, gamma)
        for _ in range(horizon):
            q = _backup(model, v, gamma)
            v = (policy * q).sum(1)
        return q
    # r(s, a) and the discounted transition matrix of (s, a) -> s' under the model.
    r = (model.prob * model.reward).sum(-1)  # (S, A)
    live = model.prob * ~model.terminal  # (S, A, K)
    step = np.zeros((model.n_states, model.n_actions, model.n_states))
    s_idx, a_idx, k_idx = np.indices(model.next_state.shape)
    np.add.at(step, (s_idx, a_idx, model.next_state), live)
    r_pi = (policy * r).sum(1)
    p_pi = np.einsum("sa,sat->st", policy, step)
    v = np.linalg.solve(np.eye(model.n_states) - gamma * p_pi, r_pi)
    return r + gamma * step @ v
