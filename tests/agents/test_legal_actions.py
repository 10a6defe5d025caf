"""Per-state legal actions: every tabular agent acts (exploring or greedy), bootstraps (max,
argmax, expectation) and is evaluated over the legal actions of each state only — on maxbias
(2 actions in A, n_actions_b in B) and on the grid world with its edge moves masked.

How "never maximised over" is proved: before training, every illegal Q entry (both tables
of Double Q) is set to 1e9. A max, argmax or expectation that let one in would carry 1e9 into
a legal entry or the greedy policy; after training the illegal entries are still exactly
1e9 (never taken, so never updated) and every legal one is of the size of the rewards.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qlab.app.build import build
from qlab.config import validate
from qlab.core import driver
from qlab.core.agents.expected_sarsa import ExpectedSarsa
from qlab.core.agents.tabular import Transition
from qlab.core.compiled import CompiledStepper
from qlab.core.envs.griddy import griddy_model
from qlab.core.envs.maxbias import maxbias_model
from qlab.core.oracle import value_iteration

AGENTS = ("tabular_q", "tabular_mc", "sarsa", "expected_sarsa", "double_q")
POISON = 1e9
ENVS = {
    "maxbias-1": ["env=maxbias", "env.n_actions_b=1", "agent.gamma=1"],  # B: 1 of 2 legal
    "maxbias-3": ["env=maxbias", "env.n_actions_b=3", "agent.gamma=1"],  # A: 2 of 3 legal
    "masked-grid": ["env=griddy", "env.height=3", "env.width=4", "env.mask_edges=true",
                    "env.max_steps=50", "agent.gamma=0.9"],
}


def poisoned(state: dict, legal: np.ndarray) -> dict:
    """An agent state with every illegal Q entry set to POISON."""
    out = dict(state)
    for key in ("q", "q1", "q2"):
        if key in out:
            out[key] = np.where(legal, out[key], POISON)
    return out


@pytest.mark.parametrize("env", list(ENVS))
@pytest.mark.parametrize("name", AGENTS)
def test_illegal_actions_never_taken_nor_maximised_over(compose_cfg, name: str,
                                                        env: str) -> None:
    c = validate(compose_cfg([f"agent={name}", *ENVS[env], "~hparams", "replicas=4",
                              "episodes=150", "agent.lr=0.2", "exploration=constant",
                              "exploration.start=0.3", "tracking.enabled=false"]))
    job = build(c)
    legal = job.env.legal
    assert legal is not None and not legal.all()
    agent = job.agent
    agent.load_state_dict(poisoned(agent.state_dict(), legal))
    taken = np.zeros(legal.shape, dtype=np.int64)
    act = agent.act

    def counting_act(state, epsilon):
        a = act(state, epsilon)
        np.add.at(taken, (state, a), 1)
        return a

    agent.act = counting_act
    job = dataclasses.replace(job, eval_every=c.episodes)
    hist = driver.train(job, fast=c.fast)  # the compiled stepper refuses masked envs
    assert hist.done.tolist() == [c.episodes] * 4 and not hist.failed
    assert taken[~legal].sum() == 0
    acting = job.env.model.acting_states
    assert (taken[acting][legal[acting]] > 0).all(), "every legal action was explored"
    state = agent.state_dict()
    for key in ("q", "q1", "q2"):
        if key in state:
            assert (state[key][:, ~legal] == POISON).all(), key
            assert (np.abs(state[key][:, legal]) < 10).all(), key
    policy = agent.greedy_policy()
    assert legal[np.arange(legal.shape[0]), policy].all()
    q_error = hist.evals["eval/q_error"][:, -1]
    assert np.isfinite(q_error).all() and (q_error < 10).all()


def test_exploration_is_uniform_over_legal_actions(compose_cfg) -> None:
    """epsilon = 1 in A of maxbias (2 legal of 10): half left, half right, nothing else."""
    job = build(validate(compose_cfg(["env=maxbias", "agent=tabular_q", "replicas=4000",
                                      "tracking.enabled=false"])))
    actions = job.agent.act(np.zeros(4000, dtype=np.int64), np.ones(4000))
    counts = np.bincount(actions, minlength=10)
    assert counts[2:].sum() == 0 and abs(counts[0] - 2000) < 130  # 4 standard deviations


def test_expected_sarsa_expectation_over_legal_actions_by_hand() -> None:
    """pi(.|s') puts epsilon / (legal count) on each legal action and 1 - epsilon on the best
    legal one; an illegal action's (huge) value does not enter."""
    legal = np.array([[True, True, True], [True, False, True]])
    agent = ExpectedSarsa(2, 3, seeds=[0], lr=0.5, gamma=1.0, legal=legal)
    agent.q[0, 1] = [1.0, 100.0, 3.0]  # action 1 is illegal in state 1
    agent.act(np.zeros(1, dtype=np.int64), np.array([0.2]))
    agent.learn(Transition(*(np.asarray([v]) for v in (0, 0, 0.0, 1, False, False, True))))
    # expectation = 0.2 * (1 + 3) / 2 + 0.8 * 3 = 2.8; Q(0, 0) = 0.5 * 2.8
    assert agent.q[0, 0, 0] == pytest.approx(1.4, abs=1e-15)


def test_oracle_on_masked_models() -> None:
    """The masked grid's V* is the plain grid's (an edge move is never optimal) and no
    illegal action is optimal; an illegal action whose placeholder pays more is ignored."""
    plain, masked = griddy_model(3, 4), griddy_model(3, 4, mask_edges=True)
    a, b = value_iteration(plain, 0.9), value_iteration(masked, 0.9)
    np.testing.assert_array_equal(a.v, b.v)
    assert not (b.optimal & ~masked.action_mask).any()
    rich = dataclasses.replace(maxbias_model(3), reward=np.where(
        maxbias_model(3).action_mask[..., None], maxbias_model(3).reward, 50.0))
    sol = value_iteration(rich, 1.0)
    assert sol.v[0] == 0.0 and sol.optimal[0].tolist() == [False, True, False]


def test_compiled_stepper_refuses_masks_and_noise(compose_cfg) -> None:
    """The kernels implement neither: fast=auto falls back to the numpy reference."""
    for overrides, why in (
            (["env=griddy", "env.mask_edges=true"], "per-state legal actions"),
            (["env=maxbias"], "per-state legal actions")):
        job = build(validate(compose_cfg(["agent=tabular_q", *overrides,
                                          "tracking.enabled=false"])))
        assert why in CompiledStepper.unsupported(job)
        assert driver.stepper_type(job, "auto") is driver.NumpyStepper
