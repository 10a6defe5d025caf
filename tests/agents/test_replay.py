"""The per-replica replay buffer: wraps, samples filled slots only, never mixes replicas."""

from __future__ import annotations

import numpy as np
import pytest

from qlab.core.agents.replay import ReplayBuffer
from qlab.core.rng import REPLAY_STREAM, ReplicaUniforms


def buffer(seeds, capacity, dim=2):
    return ReplayBuffer(len(seeds), capacity, (dim,), ReplicaUniforms(seeds, REPLAY_STREAM))


def add(buf, values, active=None):
    """One transition per replica whose every field encodes ``values`` (R,)."""
    R = buf.replicas
    v = np.asarray(values, dtype=np.float64)
    obs = np.repeat(v[:, None], buf.obs.shape[2], axis=1).astype(np.float32)
    active = np.ones(R, dtype=bool) if active is None else np.asarray(active)
    buf.add(obs, v.astype(np.int64), v, obs + 0.5, v.astype(np.int64) % 2 == 1, active)


def test_wraps_around_per_replica():
    buf = buffer([0], capacity=3)
    for t in range(5):
        add(buf, [t])
    assert buf.size.tolist() == [3] and buf.pos.tolist() == [2]
    assert buf.obs[0, :, 0].tolist() == [3, 4, 2]  # slots 0, 1 overwritten by t = 3, 4
    assert buf.action[0].tolist() == [3, 4, 2]
    assert buf.next_obs[0, :, 0].tolist() == [3.5, 4.5, 2.5]
    assert buf.terminated[0].tolist() == [True, False, False]


def test_samples_only_filled_slots():
    buf = buffer([7], capacity=100)
    for t in range(3):
        add(buf, [t + 1])  # values 1..3; empty slots hold zeros
    s = buf.sample(4096)
    assert s.obs.shape == (1, 4096, 2) and s.action.shape == (1, 4096)
    assert set(s.action[0].tolist()) == {1, 2, 3}
    assert set(s.obs[0, :, 0].tolist()) == {1.0, 2.0, 3.0}
    # The fields of a sample belong to one transition.
    np.testing.assert_array_equal(s.next_obs, s.obs + 0.5)
    np.testing.assert_array_equal(s.reward, s.action)


def test_never_mixes_replicas_and_inactive_replicas_are_not_written():
    R = 3
    buf = buffer([0, 1, 2], capacity=8)
    for t in range(20):
        # Replica k stores 100 k + t; replica 1 is inactive on odd steps.
        add(buf, [100 * k + t for k in range(R)], active=[True, t % 2 == 0, True])
    assert buf.size.tolist() == [8, 8, 8]
    assert buf.pos.tolist() == [20 % 8, 10 % 8, 20 % 8]
    assert all(v % 2 == 0 for v in buf.action[1] - 100)  # only the active (even) steps
    s = buf.sample(512)
    for k in range(R):
        assert set(s.action[k].tolist()) <= set(buf.action[k].tolist())
        assert ((s.action[k] // 100) == k).all()


def test_inactive_replica_stays_empty_and_sampling_refuses_it():
    buf = buffer([0, 1], capacity=4)
    add(buf, [1, 2], active=[True, False])
    assert buf.size.tolist() == [1, 0] and buf.pos.tolist() == [1, 0]
    assert not buf.obs[1].any() and not buf.action[1].any()
    with pytest.raises(ValueError, match=r"replica\(s\) \[1\]"):
        buf.sample(2)


def test_replica_k_samples_as_a_single_run_with_seed_k():
    seeds = [3, 4, 5]
    batch = buffer(seeds, capacity=16)
    single = buffer([4], capacity=16)
    for t in range(10):
        add(batch, [t, t, t])
        add(single, [t])
    for _ in range(3):
        np.testing.assert_array_equal(batch.sample(32).action[1], single.sample(32).action[0])


def test_empty_replicas_outside_the_used_mask_may_be_sampled_around():
    buf = buffer([0, 1], capacity=4)
    add(buf, [5, 6], active=[True, False])
    s = buf.sample(8, used=np.array([True, False]))
    assert (s.action[0] == 5).all()


def test_horizons_are_stored_sampled_and_checkpointed_with_their_transitions():
    """A buffer built with ``horizons`` (n-step DQN) keeps each transition's horizon beside
    it: sampled with it, saved and restored with it; a one-step buffer has none."""
    buf = ReplayBuffer(2, 4, (1,), ReplicaUniforms([0, 1], REPLAY_STREAM), horizons=True)
    for t in range(6):
        v = np.array([t, 10 + t], dtype=np.float32)
        buf.add(v[:, None], v.astype(np.int64), v, v[:, None], np.array([False, True]),
                np.array([True, t < 3]), horizon=np.array([t % 3 + 1, 5]))
    assert buf.horizon.tolist() == [[2, 3, 3, 1], [5, 5, 5, 0]]
    s = buf.sample(64)
    np.testing.assert_array_equal(s.horizon[0], s.action[0] % 3 + 1)  # each with its own
    assert (s.horizon[1] == 5).all()
    copy = ReplayBuffer(2, 4, (1,), ReplicaUniforms([0, 1], REPLAY_STREAM), horizons=True)
    copy.load_state_dict(buf.state_dict())
    np.testing.assert_array_equal(copy.horizon, buf.horizon)
    with pytest.raises(ValueError, match="pass a horizon exactly when the buffer stores"):
        buf.add(v[:, None], v.astype(np.int64), v, v[:, None], np.zeros(2, bool), np.ones(2, bool))
    one_step = buffer([0], 2)
    add(one_step, [1])
    assert one_step.sample(1).horizon is None and "horizon" not in one_step.state_dict()
