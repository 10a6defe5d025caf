"""DQN on the replica axis: batched network, per-replica clipping and Adam, artifacts,
ground truth on the 4x4 grid, replica equivalence, and (slow) CartPole-v1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qlab.app import train
from qlab.core import runner
from qlab.core.agents.dqn import DQN, BatchedMLP, load_q_network, mlp
from qlab.core.agents.optim import clip_adam
from qlab.core.agents.tabular import Transition
from tests.helpers import build, compose


def compose_cfg(*overrides: str):
    """A DQN job's config, untracked."""
    return compose(["agent=dqn", "tracking.enabled=false", *overrides])


def griddy_run(seed: int, replicas: int, episodes: int | None = None):
    """DQN on the 4x4 grid with the shipped defaults (conf/agent/dqn.yaml +
    conf/hparams/dqn_griddy.yaml), seeds seed .. seed + replicas - 1; returns (history,
    agent)."""
    c, env, agent, schedule, evaluator = build(compose_cfg(
        "env=griddy", f"seed={seed}", f"replicas={replicas}"))
    hist = runner.train(env, agent, schedule, episodes or c.episodes, 10, evaluator)
    return hist, agent


@pytest.fixture(scope="module")
def griddy_batch():
    """One batched run of 5 seeds (0..4) with the shipped griddy settings."""
    return griddy_run(0, 5)


# ------------------------------------------------------------------ network and optimiser

def test_batched_forward_equals_each_replicas_own_network():
    net = BatchedMLP([5, 16, 8, 3])
    rows = [net.init(torch.Generator().manual_seed(s)) for s in range(4)]
    flat = torch.stack(rows)
    x = torch.randn(4, 7, 5)
    out = net.forward(flat, x)
    assert out.shape == (4, 7, 3)
    for k in range(4):
        single = mlp([5, 16, 8, 3])
        single.load_state_dict(net.state_dict(rows[k]))
        torch.testing.assert_close(out[k], single(x[k]), rtol=0, atol=1e-6)
        assert torch.equal(out[k], net.forward(flat[k:k + 1], x[k:k + 1])[0])
    np.testing.assert_allclose(net.forward_numpy(flat.numpy(), x.numpy()), out.numpy(),
                               rtol=0, atol=1e-6)  # numpy's, for acting


def test_per_replica_init_equals_single_replica_runs():
    obs = np.eye(6, dtype=np.float32)
    batch = DQN(6, 2, [10, 11, 12], observations=obs)
    for k, seed in enumerate([10, 11, 12]):
        assert torch.equal(batch.params[k], DQN(6, 2, [seed], observations=obs).params[0])
    assert not torch.equal(batch.params[0], batch.params[1])
    assert torch.equal(batch.params, batch.target)


def test_clip_adam_equals_torch_clip_grad_norm_and_adam_per_replica():
    """The compiled step equals torch.nn.utils.clip_grad_norm_ + torch.optim.Adam applied to
    each replica alone: own lr, own step count (a masked replica skips steps), only the norm
    of a replica over max_norm is clipped."""
    R, P = 3, 300
    params = torch.randn(R, P)
    m, v, t = torch.zeros(R, P), torch.zeros(R, P), torch.zeros(R, dtype=torch.int64)
    lrs = np.array([0.01, 0.003, 0.05])
    ref = [torch.nn.Parameter(params[k].clone()) for k in range(R)]
    opts = [torch.optim.Adam([p], lr=float(lr)) for p, lr in zip(ref, lrs, strict=True)]
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        grad = torch.randn(R, P, generator=gen)
        grad[0] *= 100.0  # over max_norm: clipped
        grad[2] *= 1e-3  # under it: untouched
        rows = np.array([0, 2] if step % 2 else [0, 1, 2])  # replica 1 skips odd steps
        norms = clip_adam(params.numpy(), m.numpy(), v.numpy(), grad[rows].numpy().copy(),
                          rows, t.numpy(), lrs, 1.0)
        np.testing.assert_allclose(norms, grad[rows].norm(dim=1).numpy(), rtol=1e-5)
        for k in rows:
            ref[k].grad = grad[k].clone()
            torch.nn.utils.clip_grad_norm_([ref[k]], max_norm=1.0)
            opts[k].step()
    for k in range(R):
        torch.testing.assert_close(params[k], ref[k].detach(), rtol=1e-5, atol=1e-6)
    assert t.tolist() == [6, 3, 6]


def test_huber_grad_equals_autograd():
    net = BatchedMLP([5, 16, 8, 3])
    flat = torch.stack([net.init(torch.Generator().manual_seed(s)) for s in range(4)])
    x = torch.randn(4, 7, 5)
    action = torch.randint(0, 3, (4, 7, 1))
    y = torch.randn(4, 7) * 3.0  # errors on both sides of the Huber knee
    grad = torch.empty_like(flat)
    q, loss, _ = net.huber_grad(flat, x, action, y, net.views(grad))
    p = flat.clone().requires_grad_(True)
    q_ref = net.forward(p, x).gather(2, action)[..., 0]
    loss_ref = torch.nn.functional.smooth_l1_loss(q_ref, y, reduction="none").mean(dim=1)
    loss_ref.sum().backward()
    torch.testing.assert_close(q, q_ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(loss, loss_ref.detach(), rtol=0, atol=0)
    torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("double", [False, True])
def test_a_burst_equals_plain_torch_dqn_steps_on_the_same_minibatches(double):
    """One burst of ``gradient_steps`` (batched minibatches, targets from one forward pass,
    hand-written backward, compiled clip + Adam) against the textbook loop on each replica's
    own nn.Sequential: per step a fresh minibatch, target from the fixed target network, Huber
    loss, autograd, clip_grad_norm_, torch.optim.Adam."""
    obs_table = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    G, B = 5, 8
    agent = DQN(5, 3, [0, 1], observations=obs_table, hidden=(16, 16), lr=np.array([0.01, 0.02]),
                gamma=np.array([0.9, 0.5]), learning_starts=0, batch_size=B, train_freq=10,
                gradient_steps=G, target_update=1000, double=double, max_grad_norm=0.5)
    agent.params += 0.1 * torch.randn(agent.params.shape)  # online != target
    rng = np.random.default_rng(1)
    for _ in range(9):  # fill the buffers without training (step 10 trains)
        s = rng.integers(0, 12, 2)
        agent.learn(Transition(s, rng.integers(0, 3, 2), rng.standard_normal(2),
                               rng.integers(0, 12, 2), rng.random(2) < 0.3,
                               np.array([False, False]), np.array([True, True])))
    before, target = agent.params.clone(), agent.target.clone()
    replay = agent.buffer._rand.state()
    s = rng.integers(0, 12, 2)
    upd = agent.learn(Transition(s, np.array([0, 1]), np.array([1.0, -1.0]), s,
                                 np.array([False, True]), np.array([False, False]),
                                 np.array([True, True])))
    agent.buffer._rand.load_state(replay)  # draw the burst's minibatches again, one by one
    nets = []
    for k in range(2):
        net, tgt = mlp([5, 16, 16, 3]), mlp([5, 16, 16, 3])
        net.load_state_dict(agent.net.state_dict(before[k]))
        tgt.load_state_dict(agent.net.state_dict(target[k]))
        nets.append((net, tgt, torch.optim.Adam(net.parameters(), lr=[0.01, 0.02][k])))
    losses = np.zeros(2)
    for _ in range(G):
        b = agent.buffer.sample(B)
        for k, (net, tgt, opt) in enumerate(nets):
            x, xn = torch.from_numpy(b.obs[k]), torch.from_numpy(b.next_obs[k])
            with torch.no_grad():
                a_next = (net(xn) if double else tgt(xn)).argmax(dim=1, keepdim=True)
                v_next = tgt(xn).gather(1, a_next)[:, 0]
                y = (torch.from_numpy(b.reward[k]) + [0.9, 0.5][k]
                     * (1.0 - torch.from_numpy(b.terminated[k]).float()) * v_next)
            q = net(x).gather(1, torch.from_numpy(b.action[k])[:, None])[:, 0]
            loss = torch.nn.functional.smooth_l1_loss(q, y)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()
            losses[k] += loss.item()
    for k, (net, _, _) in enumerate(nets):
        expected = agent.net.state_dict(agent.params[k])
        for name, value in net.state_dict().items():
            torch.testing.assert_close(expected[name], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(upd.stats["td_loss"], losses, rtol=1e-5)
    assert upd.stats_count.tolist() == [G, G] and upd.count.tolist() == [G * B, G * B]


@pytest.mark.parametrize("double", [False, True])
def test_a_burst_drawn_in_pieces_equals_one_drawn_at_once(double, monkeypatch):
    """A burst too large to draw at once (BURST_VALUES) is drawn a few steps at a time: the
    same minibatches, the same updates, the same metrics."""
    from qlab.core.agents import dqn

    obs_table = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)

    def burst():
        agent = DQN(5, 3, [0, 1, 2], observations=obs_table, hidden=(16,), learning_starts=0,
                    batch_size=4, train_freq=20, gradient_steps=7, double=double)
        rng = np.random.default_rng(1)
        for _ in range(20):
            s = rng.integers(0, 12, 3)
            upd = agent.learn(Transition(s, rng.integers(0, 3, 3), rng.standard_normal(3),
                                         rng.integers(0, 12, 3), rng.random(3) < 0.3,
                                         np.zeros(3, dtype=bool), np.array([True, True, False])))
        return agent, upd

    whole, upd_whole = burst()
    monkeypatch.setattr(dqn, "BURST_VALUES", 2 * 2 * 4 * 5)  # 2 steps of 2 replicas at a time
    pieces, upd_pieces = burst()
    torch.testing.assert_close(pieces.params, whole.params, rtol=0, atol=1e-6)
    assert torch.equal(pieces._t, whole._t) and pieces._t.tolist() == [7, 7, 0]
    np.testing.assert_allclose(upd_pieces.abs_delta, upd_whole.abs_delta, rtol=1e-6)
    for key in DQN.stat_keys:
        np.testing.assert_allclose(upd_pieces.stats[key], upd_whole.stats[key], rtol=1e-6)


@pytest.mark.parametrize("double", [False, True])
def test_inactive_replicas_do_not_learn_or_store(double):
    obs = np.eye(4, dtype=np.float32)
    agent = DQN(4, 2, [0, 1], observations=obs, learning_starts=0, batch_size=4,
                target_update=1, double=double)
    before = agent.params.clone()
    active = np.array([True, False])
    for t in range(6):
        s = np.array([t % 3, t % 3])
        upd = agent.learn(Transition(s, np.array([0, 1]), np.array([1.0, 1.0]), s + 1,
                                     np.array([True, True]), np.array([True, True]), active))
    assert agent.buffer.size.tolist() == [6, 0] and agent.steps.tolist() == [6, 0]
    assert not torch.equal(agent.params[0], before[0])
    assert torch.equal(agent.params[1], before[1]) and torch.equal(agent.target[1], before[1])
    assert not agent._m[1].any() and agent._t.tolist() == [6, 0]
    assert upd.count.tolist() == [4, 0] and upd.stats_count.tolist() == [1, 0]
    assert set(upd.stats) == set(agent.stat_keys)


def test_target_refresh_hard_copy_or_polyak_only_for_masked_replicas():
    for tau in (1.0, 0.25):
        agent = DQN(3, 2, [0, 1], tau=tau)
        old = agent.target.clone()
        agent.params += 1.0
        agent._update_target(torch.tensor([True, False]))
        torch.testing.assert_close(agent.target[0], tau * agent.params[0] + (1 - tau) * old[0])
        assert torch.equal(agent.target[1], old[1])


def test_q_values_needs_a_state_table():
    agent = DQN(4, 2, [0])
    with pytest.raises(ValueError, match="no state table"):
        agent.q_values()


# ------------------------------------------------------------------ artifacts

def test_weights_artifact_loads_with_weights_only_and_reproduces_q(tmp_path, griddy_batch):
    _, agent = griddy_batch
    agent.save(3, tmp_path)
    blob = torch.load(tmp_path / "q_network.pt", weights_only=True)
    assert blob["hidden_sizes"] == [64, 64] and blob["n_actions"] == 4
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())
    net = load_q_network(tmp_path / "q_network.pt")
    with torch.no_grad():
        q = net(torch.from_numpy(agent.observations)).numpy()
    np.testing.assert_allclose(q, agent.q_values()[3], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ ground truth, equivalence

def test_dqn_reaches_an_optimal_greedy_policy_on_griddy_4x4_in_5_of_5_seeds(griddy_batch):
    hist, _ = griddy_batch
    final = hist.evals["eval/optimal_fraction"][:, -1]
    assert (final == 1.0).all(), final
    for key in ("train/td_loss", "train/q_mean", "train/q_delta", "train/epsilon"):
        assert np.isfinite(hist.train[key][:, -1]).all(), key


def test_replica_k_of_a_batch_reproduces_a_single_run_with_seed_k(griddy_batch):
    """Observed: bitwise equal (max |Δθ| = 0.0 with 1 torch thread); asserted to 1e-6."""
    hist, agent = griddy_batch
    for k in (3,):
        h1, a1 = griddy_run(k, 1)
        for key in ("train/episode_length", "train/episode_return"):
            np.testing.assert_array_equal(hist.train[key][k], h1.train[key][0])
        for key in ("train/td_loss", "train/q_delta", "train/q_mean"):
            np.testing.assert_allclose(hist.train[key][k], h1.train[key][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(agent.params[k], a1.params[0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(hist.evals["eval/optimal_fraction"][k],
                                      h1.evals["eval/optimal_fraction"][0])


# ------------------------------------------------------------------ CartPole (model-less)

def test_step_budget_and_rollout_evaluation_on_cartpole():
    cfg = compose_cfg("env=cartpole", "replicas=2", "total_steps=600", "eval_every=5",
                      "eval_episodes=3", "agent.learning_starts=100", "agent.train_freq=50",
                      "agent.gradient_steps=2", "agent.hidden=[16]")
    hist, _ = train.run(cfg)
    lengths = hist.train["train/episode_length"]
    assert np.nansum(lengths, axis=1).tolist() == [600, 600]  # the budget cuts the last one
    assert set(hist.evals) == {"eval/return"}
    for k in range(2):
        n = hist.evals_done[k]
        assert hist.eval_steps[k, n - 1] == hist.done[k] - 1  # evaluated at its end
        assert 8 <= hist.evals["eval/return"][k, n - 1] <= 500
    assert np.isfinite(hist.train["train/td_loss"]).any(axis=1).all()  # it trained


@pytest.mark.slow
def test_dqn_solves_cartpole_in_4_of_5_seeds():
    """rl-zoo's tuned settings (conf/hparams/dqn_cartpole.yaml), 50,000 env steps: the greedy
    policy (mean return of 10 evaluation episodes, every 20 episodes) reaches gymnasium's
    CartPole-v1 threshold of 475 in at least 4 of 5 seeds. Not the final evaluation alone:
    DQN's greedy return on CartPole swings between ~100 and 500 from one evaluation to the
    next late in training (Stable-Baselines3 with the same settings too: final 19, 500, 500
    on seeds 0-2 in qlab-bench), so which seeds end at 500 is a coin toss of float rounding."""
    hist, _ = train.run(compose_cfg("env=cartpole", "replicas=5"))
    assert (hist.done > 0).all()
    best = np.array([hist.evals["eval/return"][k, :hist.evals_done[k]].max() for k in range(5)])
    final = hist.evals["eval/return"][np.arange(5), hist.evals_done - 1]
    print("best / final greedy eval return per seed:", best, final)
    assert (best >= 475).sum() >= 4, best
