"""Tabular Q-learning on the replica axis: hand-computed updates (online and the source notebook's
backward sweep), a reference re-implementation replayed against real training, learning to
the optimal policy checked by value iteration, and replica k of a batch == a run of seed k."""

from __future__ import annotations

import numpy as np
import pytest

import qlab.app.train
import qlab.core.agents
from qlab.config import validate
from qlab.core import agents, driver, envs, exploration
from qlab.core.agents.qlearning import TabularQ
from qlab.core.agents.tabular import Transition
from qlab.core.driver import Job
from qlab.core.history import History, episodes_to_optimal


def transition(**fields) -> Transition:
    """A lock-step Transition from per-replica lists."""
    dtypes = {"state": np.int64, "action": np.int64, "reward": np.float64,
              "next_state": np.int64, "terminated": bool, "done": bool, "active": bool}
    return Transition(**{k: np.asarray(fields[k], dtype=dtypes[k]) for k in Transition._fields})


# ---------------------------------------------------------------------------- hand-computed

def test_single_online_update_by_hand() -> None:
    """Q(s, a) += lr * (r + gamma * max Q(s') - Q(s, a)); no bootstrap from a terminal s';
    per-replica step sizes; an inactive replica is left alone."""
    agent = TabularQ(4, 2, seeds=[0, 1, 2], lr=np.array([0.5, 0.25, 0.5]), gamma=0.9,
                     update="step")
    agent.q[0, 0] = [0.0, 0.1]
    agent.q[0, 1] = [0.2, 0.6]
    agent.q[1, 2] = [0.4, 0.0]
    agent.q[1, 3] = [5.0, 5.0]  # a terminal next state: never bootstrapped from
    agent.q[2] = 0.7
    before = agent.q.copy()
    upd = agent.learn(transition(state=[0, 2, 0], action=[1, 0, 0], reward=[0, 1, 1],
                                 next_state=[1, 3, 1], terminated=[False, True, False],
                                 done=[False, True, False], active=[True, True, False]))
    # replica 0: target 0 + 0.9 * 0.6 = 0.54; 0.1 + 0.5 * (0.54 - 0.1) = 0.32
    assert agent.q[0, 0, 1] == pytest.approx(0.32, abs=1e-15)
    # replica 1: target 1 (terminal); 0.4 + 0.25 * (1 - 0.4) = 0.55
    assert agent.q[1, 2, 0] == pytest.approx(0.55, abs=1e-15)
    changed = agent.q != before
    assert changed.sum() == 2 and changed[0, 0, 1] and changed[1, 2, 0]
    np.testing.assert_array_equal(agent.q[2], before[2])
    np.testing.assert_allclose(upd.abs_delta, [0.22, 0.15, 0.0], atol=1e-15)
    np.testing.assert_array_equal(upd.count, [1, 1, 0])


def test_episodic_backward_sweep_by_hand() -> None:
    """The source notebook's update: nothing changes until an episode ends, then it is walked
    backwards, each target using the Q just updated. A truncated last step (done, not
    terminated) bootstraps; a terminated one does not."""
    agent = TabularQ(5, 2, seeds=[0, 1], lr=0.5, gamma=0.9, update="episode")
    agent.q[0, 3] = [0.0, 0.8]  # bootstrapped from at replica 0's truncated last step
    agent.q[0, 1] = [0.0, 0.3]
    agent.q[1, 3] = [2.0, 2.0]  # replica 1 ends by termination into 3: must be ignored
    start = agent.q.copy()

    # lock-step 1: both replicas mid-episode -> no update at all
    upd = agent.learn(transition(state=[0, 4], action=[1, 0], reward=[0, 0], next_state=[1, 0],
                                 terminated=[False, False], done=[False, False],
                                 active=[True, True]))
    np.testing.assert_array_equal(agent.q, start)
    assert not upd.abs_delta.any() and not upd.count.any()

    # lock-step 2: replica 1 reaches the goal (r = 1, terminated) -> its sweep only
    upd = agent.learn(transition(state=[1, 0], action=[0, 0], reward=[0, 1], next_state=[2, 3],
                                 terminated=[False, True], done=[False, True],
                                 active=[True, True]))
    # t=1: target 1 -> Q(0,0) = 0.5; t=0: target 0.9 * max Q(0) = 0.45 -> Q(4,0) = 0.225
    assert agent.q[1, 0, 0] == pytest.approx(0.5) and agent.q[1, 4, 0] == pytest.approx(0.225)
    np.testing.assert_array_equal(agent.q[0], start[0])
    np.testing.assert_allclose(upd.abs_delta, [0.0, 0.725])
    np.testing.assert_array_equal(upd.count, [0, 2])
    after_1 = agent.q[1].copy()

    # lock-step 3: replica 0 is truncated (done, not terminated); replica 1 is inactive and
    # what it reports must be ignored
    upd = agent.learn(transition(state=[2, 0], action=[1, 1], reward=[0, 1], next_state=[3, 3],
                                 terminated=[False, True], done=[True, True],
                                 active=[True, False]))
    # t=2: target 0.9 * max Q(3) = 0.72 -> Q(2,1) = 0.36    (the source notebook would use 0 here)
    # t=1: target 0.9 * max Q(2) = 0.324 -> Q(1,0) = 0.162
    # t=0: target 0.9 * max Q(1) = 0.9 * max(0.162, 0.3) = 0.27 -> Q(0,1) = 0.135
    assert agent.q[0, 2, 1] == pytest.approx(0.36)
    assert agent.q[0, 1, 0] == pytest.approx(0.162)
    assert agent.q[0, 0, 1] == pytest.approx(0.135)
    assert (agent.q[0] != start[0]).sum() == 3
    np.testing.assert_array_equal(agent.q[1], after_1)
    np.testing.assert_allclose(upd.abs_delta, [0.36 + 0.162 + 0.135, 0.0])
    np.testing.assert_array_equal(upd.count, [3, 0])
    # Q-delta of that episode: the mean |dQ| over its three updates
    assert upd.abs_delta[0] / upd.count[0] == pytest.approx(0.219)


def test_epsilon_greedy_actions() -> None:
    """epsilon 0: the greedy action, ties broken at random; epsilon 1: uniform actions."""
    agent = TabularQ(3, 4, seeds=range(2), lr=0.1, gamma=0.9)
    agent.q[:, 0] = [0.0, 1.0, 0.0, 0.0]
    agent.q[:, 1] = [0.5, 0.0, 0.5, 0.0]
    eps0 = np.zeros(2)
    for _ in range(20):
        assert agent.act(np.array([0, 0]), eps0).tolist() == [1, 1]
    ties = np.concatenate([agent.act(np.array([1, 1]), eps0) for _ in range(400)])
    assert set(ties.tolist()) == {0, 2} and 0.4 < (ties == 0).mean() < 0.6
    rand = np.concatenate([agent.act(np.array([0, 0]), np.ones(2)) for _ in range(2000)])
    counts = np.bincount(rand, minlength=4) / rand.size
    np.testing.assert_allclose(counts, 0.25, atol=0.04)
    np.testing.assert_array_equal(agent.greedy_policy()[:, :2], [[1, 0], [1, 0]])


# ------------------------------------------------- a reference replayed against real training

class Reference:
    """Textbook Q-learning, one replica at a time in plain Python, fed the transitions the
    batched agent saw; it also keeps the per-episode mean |dQ| (the Q-delta)."""

    def __init__(self, q: np.ndarray, lr: float, gamma: float, update: str) -> None:
        self.q, self.lr, self.gamma, self.update = q.copy(), lr, gamma, update
        self.pending: list[tuple] = []
        self.deltas: list[float] = []
        self.q_delta: list[float] = []  # one per finished episode

    def _apply(self, s, a, r, s2, term) -> None:
        target = r + (0.0 if term else self.gamma * self.q[s2].max())
        d = self.lr * (target - self.q[s, a])
        self.q[s, a] += d
        self.deltas.append(abs(d))

    def step(self, s, a, r, s2, term, done) -> None:
        if self.update == "step":
            self._apply(s, a, r, s2, term)
        else:
            self.pending.append((s, a, r, s2, term))
            if done:
                for t in reversed(self.pending):
                    self._apply(*t)
                self.pending = []
        if done:
            self.q_delta.append(float(np.mean(self.deltas)))
            self.deltas = []


@pytest.mark.parametrize("update", ["step", "episode"])
def test_matches_reference_and_q_delta_is_mean_abs_change(compose_cfg, update: str) -> None:
    """Every Q of every replica equals the reference's after every lock-step (replicas that
    finished their episodes never change), and train/q_delta is the mean |dQ| per episode."""
    R, episodes = 4, 30
    c = validate(compose_cfg([f"agent.update={update}", f"replicas={R}", f"episodes={episodes}",
                              "exploration.decay=0.9", "agent.lr=0.3", "eval_every=10"]))
    seeds = list(range(R))
    env = envs.make(c.env, seeds)
    agent = agents.make(c.agent, env, seeds)
    refs = [Reference(agent.q[k], c.agent.lr, c.agent.gamma, update) for k in range(R)]
    learn = agent.learn
    inactive_calls = 0

    def checked_learn(tr: Transition):
        nonlocal inactive_calls
        frozen = agent.q[~tr.active].copy()
        upd = learn(tr)
        np.testing.assert_array_equal(agent.q[~tr.active], frozen)
        inactive_calls += int((~tr.active).any())
        for k in np.flatnonzero(tr.active):
            refs[k].step(tr.state[k], tr.action[k], tr.reward[k], tr.next_state[k],
                         tr.terminated[k], tr.done[k])
            np.testing.assert_allclose(agent.q[k], refs[k].q, rtol=0, atol=1e-12)
        return upd

    agent.learn = checked_learn
    job = Job(env, agent, exploration.make(c.exploration, R), episodes, c.eval_every)
    hist = driver.train(job, fast="off")
    assert inactive_calls > 0  # replicas did finish at different times
    for k in range(R):
        assert len(refs[k].q_delta) == episodes
        np.testing.assert_allclose(hist.train["train/q_delta"][k], refs[k].q_delta,
                                   rtol=0, atol=1e-12)


# ------------------------------------------------------------ learning, against value iteration

TUNED = ["agent.lr=0.5", "exploration.decay=0.999", "exploration.min=0.1"]
# Pinned so that tuned settings added to conf/hparams later cannot change what is tested.
PINNED = ["agent.gamma=0.95", "agent.init=0.0", "exploration.name=exponential",
          "exploration.start=1.0", "exploration.unit=episode"]

# (overrides, episodes, N: every replica optimal from this evaluated episode on, q_error bound).
# Measured with eval_every=10, seeds 0-4 | seeds 0-99 (episodes to optimal: max; final
# q_error: max):
LEARNING = {
    # The composed defaults (lr 0.1, epsilon 1 * 0.995^t floored at 0.01). The greedy policy
    # gets optimal fast, but so little exploration leaves rarely tried actions far from Q*, so
    # q_error stays high. 19 | 89 (2 of 100 seeds not optimal at 200); 0.745 | 0.855.
    "griddy-defaults": (["env=griddy"], 200, 100, 0.9),
    # lr 0.5 and a slow decay (epsilon still 0.86 after 150 episodes): Q converges to Q*.
    # step: 39 | 39; 7e-9 | 8e-8.   episode: 39 | 39; 2e-6 | 2e-4.
    "griddy-tuned-step": (["env=griddy", "agent.update=step", *TUNED, *PINNED], 150, 100, 0.01),
    "griddy-tuned-episode": (["env=griddy", "agent.update=episode", *TUNED, *PINNED], 100, 80,
                             0.01),
    # 8x8: the composed defaults leave a state suboptimal after 500 episodes in 32 of 100 seeds
    # (3 of seeds 0-4), lr 0.5 with an epsilon floor of 0.1 in 40 of 100; the slow decay
    # fixes it. 39 | 59; 0.0031 | 0.0052.
    "griddy8-tuned-step": (["env=griddy8", "agent.update=step", *TUNED, *PINNED], 150, 100,
                           0.05),
}


@pytest.mark.parametrize("case", list(LEARNING))
def test_learns_the_optimal_policy(compose_cfg, case: str) -> None:
    overrides, episodes, n_optimal, q_bound = LEARNING[case]
    cfg = compose_cfg([*overrides, "seed=0", "replicas=5", f"episodes={episodes}",
                       "eval_every=10", "tracking.enabled=false"])
    result = qlab.app.train.run(cfg)
    hist, run_ids = result.history, result.run_ids
    assert run_ids == []
    to_optimal = episodes_to_optimal(hist)
    final_opt = hist.evals["eval/optimal_fraction"][:, -1]
    final_err = hist.evals["eval/q_error"][:, -1]
    summary = f"episodes_to_optimal={to_optimal}, final q_error={final_err}"
    assert (final_opt == 1.0).all(), summary
    assert (to_optimal <= n_optimal).all(), summary
    assert (final_err < q_bound).all(), summary
    # The optimal greedy policy reaches the goal from every start: expected return 1.
    np.testing.assert_allclose(hist.evals["eval/return"][:, -1], 1.0)


# ------------------------------------------------------------------------ replica equivalence

def run_capturing_agent(compose_cfg, overrides: list[str]):
    """``qlab.app.train.run`` on a composed config; returns its History and the trained agent."""
    result = qlab.app.train.run(compose_cfg([*overrides, "tracking.enabled=false"]))
    return result.history, result.job.agent


def history_tables(hist: History) -> dict[str, np.ndarray]:
    """Every table of a History, by name, except the wall-clock ``train/sps``."""
    tables = {k: v for k, v in hist.train.items() if k != "train/sps"}
    tables.update(hist.evals)
    tables["eval_steps"] = np.broadcast_to(hist.eval_steps, hist.evals["eval/return"].shape)
    tables["done"], tables["evals_done"] = hist.done, hist.evals_done
    return tables


@pytest.mark.parametrize("update", ["step", "episode"])
def test_replica_k_equals_single_run_of_seed_k(compose_cfg, update: str) -> None:
    common = [f"agent.update={update}", "episodes=40", "eval_every=7", "exploration.decay=0.95"]
    batch, batch_agent = run_capturing_agent(compose_cfg,
                                             [*common, "seed=0", "replicas=5"])
    lengths = batch.train["train/episode_length"]
    assert not (lengths == lengths[0]).all()  # the replicas really differ
    batch_tables = history_tables(batch)
    for k in range(5):
        single, single_agent = run_capturing_agent(compose_cfg,
                                                   [*common, f"seed={k}", "replicas=1"])
        for name, table in history_tables(single).items():
            assert np.array_equal(batch_tables[name][k], table[0], equal_nan=True), (k, name)
        assert np.array_equal(batch_agent.q_values()[k], single_agent.q_values()[0]), k
