"""The maxbias env (Sutton & Barto's Example 6.7): its exact model and Q*, the gymnasium env
and its action masks, the batched env's reward noise, replicas and checkpoints."""

from __future__ import annotations

from pathlib import Path

import gymnasium
import numpy as np
import pytest

import qlab
from qlab.config import ConfigError, validate
from qlab.core.envs.maxbias import END, LEFT, RIGHT, A, B, MaxBiasEnv, maxbias_model
from qlab.core.envs.vector import TabularVecEnv
from qlab.core.oracle import value_iteration
from tests.helpers import assert_same_history, assert_same_state, checkpoint_round_trip


def test_model_and_q_star() -> None:
    """Two legal actions in A, n_actions_b in B; right ends at 0, left leads to B; B's actions
    end with mean reward -0.1. Q*(A, left) = -0.1 < Q*(A, right) = 0: right is optimal, and
    only right (nothing illegal is ever 'optimal')."""
    m = maxbias_model(4)
    assert m.n_actions == 4 and m.n_states == 3
    assert m.action_mask.tolist() == [[True, True, False, False], [True] * 4,
                                      [True, False, False, False]]
    assert m.next_state[A, LEFT, 0] == B and not m.terminal[A, LEFT, 0]
    assert m.terminal[A, RIGHT, 0] and m.terminal[B, :, 0].all()
    np.testing.assert_array_equal(m.reward[B, :, 0], -0.1)
    np.testing.assert_array_equal(m.reward_std[B, :, 0], 1.0)
    assert m.acting_states.tolist() == [True, True, False]
    sol = value_iteration(m, 1.0)
    assert sol.q[A, LEFT] == pytest.approx(-0.1) and sol.q[A, RIGHT] == 0.0
    assert sol.v[A] == 0.0 and sol.v[B] == pytest.approx(-0.1)
    assert sol.optimal[A].tolist() == [False, True, False, False]
    assert sol.optimal[B].tolist() == [True] * 4
    assert maxbias_model(1).n_actions == 2 and maxbias_model(1).action_mask[B].tolist() == [
        True, False]


def test_gymnasium_env_masks_and_rewards() -> None:
    """info["action_mask"] (int8) after reset and every step; an illegal action refused (the
    env is strict: gymnasium's env checker, which steps random actions, does not apply);
    B's rewards are N(-0.1, 1)."""
    env = gymnasium.make("qlab/MaxBias-v0", n_actions_b=10)
    obs, info = env.reset(seed=0)
    assert obs == A and info["action_mask"].dtype == np.int8
    assert info["action_mask"].tolist() == [1, 1] + [0] * 8
    with pytest.raises(ValueError, match=r"action=5: not legal in state A \(legal: \[0, 1\]\)"):
        env.step(5)
    rewards = []
    for _ in range(4000):
        env.reset()
        obs, r, term, trunc, info = env.step(LEFT)
        assert (obs, r, term, trunc) == (B, 0.0, False, False)
        assert info["action_mask"].tolist() == [1] * 10
        obs, r, term, trunc, info = env.step(7)
        assert term and not trunc and obs == END
        rewards.append(r)
    assert np.mean(rewards) == pytest.approx(-0.1, abs=0.06)  # 4 standard errors
    assert np.std(rewards) == pytest.approx(1.0, abs=0.05)
    env.reset()
    assert env.step(RIGHT)[1:3] == (0.0, True)
    with pytest.raises(ValueError, match="n_actions_b=0: must be an int >= 1"):
        MaxBiasEnv(0)


def test_batched_env_draws_noise_per_replica_and_refuses_illegal_actions() -> None:
    """Each replica's noise is its own stream's (replica k of a batch = seed k alone); the
    rewards have B's mean and spread; an illegal action is refused in one line."""
    seeds = [0, 1, 2]
    batch, alone = TabularVecEnv(maxbias_model(), seeds), TabularVecEnv(maxbias_model(), [1])
    got, mine = [], []
    for _ in range(3000):
        batch.reset(), alone.reset()
        batch.step(np.full(3, LEFT)), alone.step(np.array([LEFT]))
        got.append(batch.step(np.array([0, 3, 9])).reward)
        mine.append(alone.step(np.array([3])).reward[0])
        batch.restart(np.ones(3, bool)), alone.restart(np.ones(1, bool))
    got = np.array(got)
    np.testing.assert_array_equal(got[:, 1], mine)
    assert abs(got.mean() + 0.1) < 0.05 and abs(got.std() - 1.0) < 0.04
    assert not np.array_equal(got[:, 0], got[:, 2])
    batch.reset()
    with pytest.raises(ValueError, match=r"^replica 1: action 4 is not legal in state 0 "
                                         r"\(legal: \[0, 1\]\)$"):
        batch.step(np.array([0, 4, 1]))


def test_config(compose_cfg) -> None:
    c = validate(compose_cfg(["env=maxbias", "agent=double_q", "env.n_actions_b=3"]))
    assert c.env.n_actions_b == 3 and c.env.max_steps is None
    with pytest.raises(ConfigError, match=r"^env.n_actions_b=0: must be >= 1"):
        validate(compose_cfg(["env=maxbias", "env.n_actions_b=0"]))
    with pytest.raises(ConfigError, match=r"^env=maxbias \(qlab/MaxBias-v0\) offers different "
                                          r"actions per state: agent=dqn does not act by"):
        validate(compose_cfg(["env=maxbias", "agent=dqn"]))


@pytest.mark.parametrize("name", ["tabular_q", "double_q"])
def test_replica_k_equals_seed_k_and_checkpoint_round_trip(compose_cfg, name: str,
                                                           tmp_path: Path) -> None:
    """Bit for bit, reward noise included: replica k of a batch is seed k alone, and a run
    stopped at a checkpoint and resumed ends where an uninterrupted one ends."""
    common = ["env=maxbias", f"agent={name}", "exploration=constant", "exploration.start=0.1",
              "agent.lr=0.1", "agent.gamma=1", "episodes=60", "eval_every=20",
              "tracking.enabled=false"]
    batch = qlab.run(compose_cfg([*common, "seed=0", "replicas=3"]))
    for k in (0, 2):
        alone = qlab.run(compose_cfg([*common, f"seed={k}", "replicas=1"]))
        assert_same_history(batch.history, alone.history, [k], [0])
        np.testing.assert_array_equal(batch.q_values[k], alone.q_values[0])
    c = validate(compose_cfg([*common, "replicas=2"]))
    ref_job, ref, (header, state), job2, out = checkpoint_round_trip(c, tmp_path / "c.npz", 10)
    assert "noise" in state["env"]
    assert_same_history(ref, out)
    assert_same_state(ref_job.agent.state_dict(), job2.agent.state_dict())
    assert_same_state(ref_job.env.state_dict(), job2.env.state_dict(), "env")
