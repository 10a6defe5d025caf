"""TabularMC: exact backward-return updates (every- and first-visit), Q-delta, no bootstrap at
truncation, and replica equivalence (replica k of a batch == a run of R = 1 with seed k)."""

from __future__ import annotations

import numpy as np
import pytest

from qlab.config import EnvConfig, ExplorationConfig
from qlab.core import driver, envs, exploration
from qlab.core.agents.mc import TabularMC
from qlab.core.agents.tabular import Transition
from qlab.core.driver import Job
from qlab.core.evaluation import Evaluator
from qlab.core.history import History

LR, GAMMA = 0.5, 0.9


def step(agent: TabularMC, s, a, r, s2, terminated=False, done=None, active=None):
    """Feed one lock-step (R = len(s)) to the agent."""
    s, a, r, s2 = (np.atleast_1d(np.asarray(x)) for x in (s, a, r, s2))
    R = len(s)
    terminated = np.broadcast_to(np.asarray(terminated), (R,))
    done = terminated if done is None else np.broadcast_to(np.asarray(done), (R,))
    active = np.ones(R, dtype=bool) if active is None else np.asarray(active)
    return agent.learn(Transition(s, a, np.asarray(r, dtype=float), s2, terminated, done,
                                  active))


def test_two_step_episode_every_visit() -> None:
    agent = TabularMC(3, 2, seeds=[0], lr=LR, gamma=GAMMA)
    upd = step(agent, 0, 1, 0.0, 1)
    assert upd.count[0] == 0 and upd.abs_delta[0] == 0  # nothing learned mid-episode
    assert not agent.q.any()
    upd = step(agent, 1, 0, 1.0, 2, terminated=True)
    # Backwards: G = 1 at t = 1, then G = 0 + 0.9 * 1 at t = 0.
    expected = np.zeros((3, 2))
    expected[1, 0] = LR * 1.0
    expected[0, 1] = LR * GAMMA
    np.testing.assert_array_equal(agent.q[0], expected)
    assert upd.count[0] == 2
    assert upd.abs_delta[0] / upd.count[0] == pytest.approx((0.5 + 0.45) / 2)


@pytest.mark.parametrize("first_visit", [False, True])
def test_repeated_pair_every_vs_first_visit(first_visit: bool) -> None:
    agent = TabularMC(2, 2, seeds=[0], lr=LR, gamma=GAMMA, first_visit=first_visit)
    step(agent, 0, 0, 0.0, 0)  # a bump: (0, 0) again next step
    upd = step(agent, 0, 0, 1.0, 1, terminated=True)
    if first_visit:
        # Only t = 0 updates, toward its return 0 + 0.9 * 1.
        assert agent.q[0, 0, 0] == LR * GAMMA
        assert upd.count[0] == 1 and upd.abs_delta[0] == pytest.approx(0.45)
    else:
        # t = 1 first (toward 1): 0.5; then t = 0 (toward 0.9): 0.5 + 0.5 * (0.9 - 0.5) = 0.7.
        assert agent.q[0, 0, 0] == pytest.approx(0.7)
        assert upd.count[0] == 2
        assert upd.abs_delta[0] / upd.count[0] == pytest.approx((0.5 + 0.2) / 2)
    assert agent.q[0, 0, 1] == agent.q[0, 1].sum() == 0.0


def test_first_visit_mask_uses_first_occurrence_per_replica() -> None:
    agent = TabularMC(4, 2, seeds=[0, 1], lr=1.0, gamma=1.0, first_visit=True)
    # Replica 0 visits (0, 0), (1, 1), (0, 0); replica 1 visits (1, 1), (0, 0), (1, 1).
    step(agent, [0, 1], [0, 1], [1.0, 10.0], [1, 0])
    step(agent, [1, 0], [1, 0], [2.0, 20.0], [0, 1])
    step(agent, [0, 1], [0, 1], [4.0, 40.0], [3, 3], terminated=True)
    # lr = 1, gamma = 1: Q = the undiscounted return from the first occurrence.
    assert agent.q[0, 0, 0] == 7.0 and agent.q[0, 1, 1] == 6.0
    assert agent.q[1, 1, 1] == 70.0 and agent.q[1, 0, 0] == 60.0


def test_truncated_episode_does_not_bootstrap() -> None:
    agent = TabularMC(2, 1, seeds=[0], lr=1.0, gamma=GAMMA, init=5.0)
    step(agent, 0, 0, 1.0, 1, terminated=False, done=True)  # time limit
    assert agent.q[0, 0, 0] == 1.0  # G = r, not r + gamma * Q(1) = 5.5
    assert agent.q[0, 1, 0] == 5.0


def test_replicas_ending_at_different_steps_and_inactive_ones() -> None:
    agent = TabularMC(3, 2, seeds=[0, 1, 2], lr=LR, gamma=GAMMA)
    active = np.array([True, True, False])
    step(agent, [0, 0, 0], [0, 0, 0], [1.0, 0.0, 1.0], [1, 1, 1],
         terminated=[True, False, True], active=active)
    upd = step(agent, [0, 1, 0], [0, 1, 0], [0.0, 1.0, 1.0], [1, 2, 1],
               terminated=[False, True, True], active=active)
    assert agent.q[0, 0, 0] == LR * 1.0  # replica 0: its first episode only
    assert agent.q[1, 1, 1] == LR * 1.0 and agent.q[1, 0, 0] == LR * GAMMA
    assert not agent.q[2].any()  # inactive: never changes
    np.testing.assert_array_equal(upd.count, [0, 2, 0])


def test_q_is_not_rounded() -> None:
    agent = TabularMC(2, 1, seeds=[0], lr=0.3, gamma=1.0)
    step(agent, 0, 0, 1 / 3, 1, terminated=True)
    assert agent.q[0, 0, 0] == 0.3 * (1 / 3)  # the source notebook rounded to 2 decimals


def train_mc(seeds: list[int], first_visit: bool) -> tuple[History, TabularMC]:
    env_cfg = EnvConfig(name="frozenlake", id="FrozenLake-v1", max_steps=100,
                        kwargs={"map_name": "4x4", "is_slippery": True})
    env = envs.make(env_cfg, seeds)
    agent = TabularMC(env.n_states, env.n_actions, seeds, lr=0.1, gamma=0.99,
                      first_visit=first_visit)
    schedule = exploration.make(ExplorationConfig(decay=0.98), len(seeds))
    evaluator = Evaluator(env.model, agent.gamma)
    job = Job(env, agent, schedule, episodes=60, eval_every=20, evaluator=evaluator)
    return driver.train(job, fast="off"), agent


@pytest.mark.parametrize("first_visit", [False, True])
def test_replica_k_of_a_batch_equals_a_single_run_with_seed_k(first_visit: bool) -> None:
    seeds = [0, 1, 2, 3, 4]
    batch, batch_agent = train_mc(seeds, first_visit)
    assert batch_agent.q.any()
    for k in seeds:
        single, agent = train_mc([k], first_visit)
        np.testing.assert_array_equal(batch_agent.q[k], agent.q[0])
        for key, table in batch.train.items():
            if key != "train/sps":  # wall clock
                assert np.array_equal(table[k], single.train[key][0], equal_nan=True), key
        for key, table in batch.evals.items():
            assert np.array_equal(table[k], single.evals[key][0], equal_nan=True), key


@pytest.mark.parametrize("first_visit", [False, True])
def test_vectorised_and_per_replica_sweeps_agree_exactly(first_visit: bool,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Episodes ending together are swept one by one (few) or vectorised (many): same floats."""
    seeds = list(range(12))
    monkeypatch.setattr(TabularMC, "SCALAR_ROWS", 10**9)
    rows, rows_agent = train_mc(seeds, first_visit)
    monkeypatch.setattr(TabularMC, "SCALAR_ROWS", 0)
    vec, vec_agent = train_mc(seeds, first_visit)
    np.testing.assert_array_equal(rows_agent.q, vec_agent.q)
    assert np.array_equal(rows.train["train/q_delta"], vec.train["train/q_delta"], equal_nan=True)
