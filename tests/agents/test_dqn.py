"""DQN on the replica axis: batched network, per-replica clipping and Adam against plain
torch, checkpoints, agent.device, artifacts, ground truth on the 4x4 grid, replica
equivalence, and (slow) CartPole-v1."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qlab.app import train
from qlab.app.build import build
from qlab.config import ConfigError, validate
from qlab.core import driver
from qlab.core.agents.dqn import DQN, BatchedMLP, load_q_network, mlp
from qlab.core.agents.tabular import Transition
from tests.helpers import compose


def compose_cfg(*overrides: str):
    """A DQN job's config, untracked."""
    return compose(["agent=dqn", "tracking.enabled=false", *overrides])


def griddy_run(seed: int, replicas: int, episodes: int | None = None):
    """DQN on the 4x4 grid with the shipped defaults (conf/agent/dqn.yaml +
    conf/hparams/dqn_griddy.yaml); returns (history, agent)."""
    c = validate(compose_cfg("env=griddy", f"seed={seed}", f"replicas={replicas}"))
    job = dataclasses.replace(build(c), episodes=episodes or c.episodes, eval_every=10)
    return driver.train(job), job.agent


@pytest.fixture(scope="module")
def griddy_batch():
    """One batched run of 5 seeds (0..4) with the shipped griddy settings."""
    return griddy_run(0, 5)


SHORT = 30  # episodes: ~1000 env steps per replica, past learning_starts and target updates


@pytest.fixture(scope="module")
def short_batch():
    """The same batch cut to its first ``SHORT`` episodes (what the unit tests need: an agent
    that has learned, not a solved grid)."""
    return griddy_run(0, 5, SHORT)


# ------------------------------------------------------------------ network and optimiser

def test_batched_forward_equals_each_replicas_own_network():
    net = BatchedMLP([5, 16, 8, 3])
    rows = [net.init(torch.Generator().manual_seed(s)) for s in range(4)]
    flat = torch.stack(rows)
    x = torch.randn(4, 7, 5, generator=torch.Generator().manual_seed(0))
    out = net.forward(net.views(flat), x)
    assert out.shape == (4, 7, 3)
    for k in range(4):
        single = mlp([5, 16, 8, 3])
        single.load_state_dict(net.state_dict(rows[k]))
        torch.testing.assert_close(out[k], single(x[k]), rtol=0, atol=1e-6)
        assert torch.equal(out[k], net.forward(net.views(flat[k:k + 1]), x[k:k + 1])[0])
    np.testing.assert_allclose(net.forward_numpy(flat.numpy(), x.numpy()), out.numpy(),
                               rtol=0, atol=1e-6)  # numpy's, for acting


def test_per_replica_init_equals_single_replica_runs():
    obs = np.eye(6, dtype=np.float32)
    batch = DQN(6, 2, [10, 11, 12], observations=obs)
    for k, seed in enumerate([10, 11, 12]):
        assert torch.equal(batch.params[k], DQN(6, 2, [seed], observations=obs).params[0])
    assert not torch.equal(batch.params[0], batch.params[1])
    assert torch.equal(batch.params, batch.target)


@pytest.mark.parametrize("double", [False, True])
def test_a_burst_equals_plain_torch_dqn_steps_on_the_same_minibatches(double):
    """One burst of ``gradient_steps`` (minibatches drawn at once, one backward over the
    replica axis, per-replica clip, one torch.optim.Adam over rows of replicas with different
    lr) against the textbook loop on each replica's own nn.Sequential: per step a fresh
    minibatch, target from the fixed target network, Huber loss, autograd, clip_grad_norm_,
    torch.optim.Adam; weights and Adam's moments agree."""
    obs_table = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    G, B = 5, 8
    agent = DQN(5, 3, [0, 1], observations=obs_table, hidden=(16, 16), lr=np.array([0.01, 0.02]),
                gamma=np.array([0.9, 0.5]), learning_starts=0, batch_size=B, train_freq=10,
                gradient_steps=G, target_update=1000, double=double, max_grad_norm=0.5)
    # online != target; a fixed draw (torch's global seed differs per process, and about 1 draw
    # in 200 put one weight 2.7e-6 off, past the tolerance below)
    agent.params += 0.1 * torch.randn(agent.params.shape,
                                      generator=torch.Generator().manual_seed(0))
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
    for k, (net, _, opt) in enumerate(nets):
        expected = agent.net.state_dict(agent.params[k].detach())
        exp_avg = agent.net.state_dict(agent._m[k])
        for (name, value), p in zip(net.state_dict().items(), net.parameters(), strict=True):
            torch.testing.assert_close(expected[name], value, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(exp_avg[name], opt.state[p]["exp_avg"], rtol=1e-5,
                                       atol=1e-7)
    np.testing.assert_allclose(upd.stats["td_loss"], losses, rtol=1e-5)
    assert upd.stats_count.tolist() == [G, G] and upd.count.tolist() == [G * B, G * B]


def test_each_replica_keeps_its_own_lr_and_adam_step_count():
    """Bursts that different replicas take part in (one finished for a while, one with another
    lr): each replica equals a plain torch.optim.Adam of its own lr that stepped only in its
    bursts (its step count, hence its bias correction, is its own), Adam's moments included;
    a replica outside a burst does not change."""
    obs_table = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    G, B, lrs = 3, 4, [0.01, 0.01, 0.02]
    agent = DQN(5, 3, [0, 1, 2], observations=obs_table, hidden=(8,), lr=np.array(lrs),
                gamma=0.9, batch_size=B, gradient_steps=G, max_grad_norm=0.5)
    rng = np.random.default_rng(1)
    for _ in range(10):
        agent.buffer.add(obs_table[rng.integers(0, 12, 3)], rng.integers(0, 3, 3),
                         rng.standard_normal(3).astype(np.float32),
                         obs_table[rng.integers(0, 12, 3)], rng.random(3) < 0.3,
                         np.ones(3, dtype=bool))
    with torch.no_grad():
        agent.params += 0.1 * torch.randn(  # online != target (a fixed draw)
            agent.params.shape, generator=torch.Generator().manual_seed(0))
    refs = []
    for k in range(3):
        net, tgt = mlp([5, 8, 3]), mlp([5, 8, 3])
        net.load_state_dict(agent.net.state_dict(agent.params[k].detach()))
        tgt.load_state_dict(agent.net.state_dict(agent.target[k]))
        refs.append((net, tgt, torch.optim.Adam(net.parameters(), lr=lrs[k])))
    for due in ([True, False, True], [True, True, True], [False, True, True]):
        replay, before = agent.buffer._rand.state(), agent.params.detach().clone()
        agent._train(np.array(due))
        agent.buffer._rand.load_state(replay)  # the burst's minibatches again
        b = agent.buffer.sample(G * B)
        for k in range(3):
            if not due[k]:
                assert torch.equal(agent.params[k], before[k])
                continue
            net, tgt, opt = refs[k]
            for j in range(G):
                rows = slice(j * B, (j + 1) * B)
                with torch.no_grad():
                    y = torch.from_numpy(b.reward[k, rows]) + 0.9 * (
                        1.0 - torch.from_numpy(b.terminated[k, rows]).float()
                    ) * tgt(torch.from_numpy(b.next_obs[k, rows])).amax(dim=1)
                q = net(torch.from_numpy(b.obs[k, rows])).gather(
                    1, torch.from_numpy(b.action[k, rows])[:, None])[:, 0]
                opt.zero_grad()
                torch.nn.functional.smooth_l1_loss(q, y).backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
                opt.step()
    assert agent._t.tolist() == [2 * G, 2 * G, 3 * G]
    for k, (net, _, opt) in enumerate(refs):
        got = {"param": agent.net.state_dict(agent.params[k].detach()),
               "exp_avg": agent.net.state_dict(agent._m[k]),
               "exp_avg_sq": agent.net.state_dict(agent._v[k])}
        for name, p in net.named_parameters():
            assert opt.state[p]["step"].item() == agent._t[k]
            torch.testing.assert_close(got["param"][name], p.detach(), rtol=1e-5, atol=1e-6)
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(got[key][name], opt.state[p][key], rtol=1e-5,
                                           atol=1e-8)


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
    assert pieces._t.tolist() == whole._t.tolist() == [7, 7, 0]
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


def test_a_checkpointed_agent_continues_bit_exactly(tmp_path):
    """state_dict -> checkpoint file (numpy arrays and JSON, nothing pickled) -> a fresh agent:
    networks, Adam's moments and step counts, counters and streams carry over, so it continues
    exactly as the uninterrupted agent (here while one replica finishes)."""
    from qlab.app import checkpoint

    obs = np.eye(6, dtype=np.float32)

    def make() -> DQN:
        return DQN(6, 2, [0, 1], observations=obs, hidden=(8,), lr=np.array([0.01, 0.02]),
                   learning_starts=4, batch_size=4, train_freq=2, gradient_steps=3,
                   target_update=3)

    def feed(agent: DQN, rng: np.random.Generator, steps: int, active: np.ndarray) -> None:
        for _ in range(steps):
            s = rng.integers(0, 6, 2)
            agent.learn(Transition(s, rng.integers(0, 2, 2), rng.standard_normal(2),
                                   rng.integers(0, 6, 2), rng.random(2) < 0.2,
                                   np.zeros(2, dtype=bool), active))

    both, first = np.array([True, True]), np.array([True, False])
    agent, rng = make(), np.random.default_rng(0)
    feed(agent, rng, 11, both)
    checkpoint.write(tmp_path / "c.npz", {"agent": agent.state_dict()}, {})
    _, state = checkpoint.read(tmp_path / "c.npz")
    assert state["agent"]["adam"]["step"].tolist() == [9, 9]
    restored, rng2 = make(), np.random.default_rng(0)
    restored.load_state_dict(state["agent"])
    rng2.bit_generator.state = rng.bit_generator.state
    for a, r in ((agent, rng), (restored, rng2)):
        feed(a, r, 5, both)
        feed(a, r, 6, first)
    for name in ("params", "target", "_m", "_v"):
        assert torch.equal(getattr(restored, name), getattr(agent, name)), name
    assert restored._t.tolist() == agent._t.tolist() == [27, 18]
    assert restored.steps.tolist() == agent.steps.tolist()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available")
def test_agent_device_cuda_is_refused_without_a_gpu():
    with pytest.raises(ConfigError, match=r"^agent\.device='cuda': no CUDA device here"):
        validate(compose_cfg("env=cartpole", "agent.device=cuda"))
    with pytest.raises(ConfigError, match=r"^agent\.device='tpu': must be one of cpu, cuda$"):
        validate(compose_cfg("env=cartpole", "agent.device=tpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_agent_device_cuda_keeps_networks_and_optimiser_on_the_gpu(tmp_path):
    """agent.device=cuda: networks, Adam's state and minibatches on the GPU, the same burst as
    on the CPU up to float rounding; acting, checkpoints and artifacts as on the CPU."""
    obs_table = np.random.default_rng(0).standard_normal((12, 5)).astype(np.float32)
    trained = {}
    for device in ("cpu", "cuda"):
        agent = DQN(5, 3, [0, 1], observations=obs_table, hidden=(16,), batch_size=8,
                    gradient_steps=4, device=device)
        rng = np.random.default_rng(1)
        for _ in range(10):
            agent.buffer.add(obs_table[rng.integers(0, 12, 2)], rng.integers(0, 3, 2),
                             rng.standard_normal(2).astype(np.float32),
                             obs_table[rng.integers(0, 12, 2)], rng.random(2) < 0.3,
                             np.ones(2, dtype=bool))
        agent._train(np.ones(2, dtype=bool))
        trained[device] = agent
    gpu, cpu = trained["cuda"], trained["cpu"]
    assert gpu.params.device.type == gpu._m.device.type == gpu.target.device.type == "cuda"
    torch.testing.assert_close(gpu.params.cpu(), cpu.params, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu._v.cpu(), cpu._v, rtol=1e-4, atol=1e-8)
    assert gpu.act(np.array([0, 1]), np.zeros(2)).shape == (2,)
    np.testing.assert_allclose(gpu.q_values(), cpu.q_values(), rtol=1e-4, atol=1e-5)
    assert isinstance(gpu.state_dict()["adam"]["exp_avg"], np.ndarray)
    gpu.save(0, tmp_path)
    assert load_q_network(tmp_path / "q_network.pt")[0].weight.device.type == "cpu"
    result = train.run(compose_cfg("env=griddy", "agent.device=cuda", "episodes=20",
                                   "agent.learning_starts=50"))
    assert np.isfinite(result.history.train["train/td_loss"]).any()


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

def test_weights_artifact_loads_with_weights_only_and_reproduces_q(tmp_path, short_batch):
    _, agent = short_batch
    agent.save(3, tmp_path)
    blob = torch.load(tmp_path / "q_network.pt", weights_only=True)
    assert blob["hidden_sizes"] == [64, 64] and blob["n_actions"] == 4
    assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())
    net = load_q_network(tmp_path / "q_network.pt")
    with torch.no_grad():
        q = net(torch.from_numpy(agent.observations)).numpy()
    np.testing.assert_allclose(q, agent.q_values()[3], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ ground truth, equivalence

@pytest.mark.training  # 150 episodes x 5 seeds, to a verdict against the optimal policy
def test_dqn_reaches_an_optimal_greedy_policy_on_griddy_4x4_in_5_of_5_seeds(griddy_batch):
    hist, _ = griddy_batch
    final = hist.evals["eval/optimal_fraction"][:, -1]
    assert (final == 1.0).all(), final
    for key in ("train/td_loss", "train/q_mean", "train/q_delta", "train/epsilon"):
        assert np.isfinite(hist.train[key][:, -1]).all(), key


def test_replica_k_of_a_batch_reproduces_a_single_run_with_seed_k(short_batch):
    """Observed: bitwise equal (max |Δθ| = 0.0 with 1 torch thread); asserted to 1e-6."""
    hist, agent = short_batch
    for k in (3,):
        h1, a1 = griddy_run(k, 1, SHORT)
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
    result = train.run(cfg)
    hist, _ = result.history, result.run_ids
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
    result = train.run(compose_cfg("env=cartpole", "replicas=5"))
    hist, _ = result.history, result.run_ids
    assert (hist.done > 0).all()
    best = np.array([hist.evals["eval/return"][k, :hist.evals_done[k]].max() for k in range(5)])
    final = hist.evals["eval/return"][np.arange(5), hist.evals_done - 1]
    print("best / final greedy eval return per seed:", best, final)
    assert (best >= 475).sum() >= 4, best
