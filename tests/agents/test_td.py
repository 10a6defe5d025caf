"""SARSA, Expected SARSA and Double Q-learning (Sutton & Barto, 2nd ed., 6.4, 6.6, 6.7) on the
replica axis.

- a hand-computed update of each (tiny tables, known numbers); Double Q's coin is fair and
  each replica's own;
- each replayed against a plain one-replica reference on real training, truncated episodes
  and a per-step epsilon schedule included: every Q after every lock-step, inactive replicas
  unchanged, and ``train/q_delta`` the mean |dQ| of each episode;
- the tuned settings in conf/hparams reach the optimal greedy policy on the 4x4, 8x8 and a
  3x7 grid (judged against value iteration's Q*), and come within 0.02 of V* on FrozenLake
  (slow);
- cliff walking at a fixed epsilon 0.1 (the book's Example 6.6): SARSA and Expected SARSA
  learn the safe path, Q-learning the cliff edge;
- replica k of a batch is the run of seed k alone; a checkpoint round trip ends where an
  uninterrupted job ends; ``qlab-train``'s path end to end, tracked; ``fast=on`` refused.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab
import qlab.app.train
import qlab.cli
from qlab.app.build import build
from qlab.config import CONF_DIR, validate
from qlab.core import agents, driver, envs, exploration
from qlab.core.agents.double_q import DoubleQ
from qlab.core.agents.expected_sarsa import ExpectedSarsa
from qlab.core.agents.sarsa import Sarsa
from qlab.core.agents.tabular import Transition
from qlab.core.driver import Job, NumpyStepper
from qlab.core.evaluation import Evaluator
from qlab.core.oracle import policy_value, value_iteration
from tests.helpers import (
    assert_same_history,
    assert_same_state,
    checkpoint_round_trip,
    next_uniforms,
)

AGENTS = ("sarsa", "expected_sarsa", "double_q")
WALL_CLOCK = ("train/sps",)


def transition(**fields) -> Transition:
    """A lock-step Transition from per-replica lists."""
    dtypes = {"state": np.int64, "action": np.int64, "reward": np.float64,
              "next_state": np.int64, "terminated": bool, "done": bool, "active": bool}
    return Transition(**{k: np.asarray(fields[k], dtype=dtypes[k]) for k in Transition._fields})


# ---------------------------------------------------------------------------- hand-computed

def test_sarsa_update_by_hand() -> None:
    """A step's update waits for the action taken next (a', not the greedy one) and is
    applied then; a terminal step's target is r, applied at once; a truncated step bootstraps
    from the action epsilon-greedy would take from s'; an inactive replica keeps its pending
    update and its Q."""
    agent = Sarsa(5, 2, seeds=[0, 1, 2], lr=np.array([0.5, 0.25, 0.5]), gamma=0.9)
    agent.q[0, 1] = [0.8, 0.2]  # replica 0 will take the worse action 1 from state 1
    agent.q[1, 3] = [4.0, 4.0]  # replica 1 ends by termination into 3: never bootstrapped
    agent.q[2, 4] = [0.3, 0.6]  # replica 2 is truncated in 4: greedy a' = 1 at epsilon 0
    agent.q[2, 0] = [0.1, 0.0]
    start = agent.q.copy()
    agent.act(np.array([0, 2, 0]), np.zeros(3))  # the driver passes the step's epsilon here
    upd = agent.learn(transition(state=[0, 2, 0], action=[1, 0, 0], reward=[0, 1, 0],
                                 next_state=[1, 3, 4], terminated=[False, True, False],
                                 done=[False, True, True], active=[True, True, True]))
    # replica 0: pending, Q unchanged; replica 1: 0 + 0.25 * (1 - 0) = 0.25
    # replica 2: truncated, a' = argmax Q(4) = 1: 0.1 + 0.5 * (0.9 * 0.6 - 0.1) = 0.32
    assert agent.q[0].tolist() == start[0].tolist() and agent.pending.tolist() == [1, 0, 0]
    assert agent.q[1, 2, 0] == pytest.approx(0.25, abs=1e-15)
    assert agent.q[2, 0, 0] == pytest.approx(0.32, abs=1e-15)
    np.testing.assert_allclose(upd.abs_delta, [0.0, 0.25, 0.22], atol=1e-15)
    np.testing.assert_array_equal(upd.count, [0, 1, 1])

    # replica 0 took a' = 1 from s' = 1: Q(0, 1) = 0 + 0.5 * (0 + 0.9 * Q(1, 1) - 0) = 0.09
    # (Q-learning would use max Q(1) = 0.8); this step (1, 1) is pending in its turn.
    # Replicas 1 and 2 are inactive: nothing of theirs changes.
    before = agent.state_dict()
    upd = agent.learn(transition(state=[1, 0, 0], action=[1, 0, 0], reward=[0, 5, 5],
                                 next_state=[2, 1, 1], terminated=[False, True, True],
                                 done=[False, True, True], active=[True, False, False]))
    assert agent.q[0, 0, 1] == pytest.approx(0.09, abs=1e-15)
    assert (agent.q != before["q"]).sum() == 1
    assert agent.pending.tolist() == [1, 0, 0]
    assert (agent.pending_state[0], agent.pending_action[0]) == (1, 1)
    np.testing.assert_allclose(upd.abs_delta, [0.09, 0, 0], atol=1e-15)
    np.testing.assert_array_equal(upd.count, [1, 0, 0])

    # an inactive replica with a pending update keeps it, unapplied
    before = agent.state_dict()
    agent.learn(transition(state=[2, 0, 0], action=[0, 0, 0], reward=[1, 0, 0],
                           next_state=[3, 1, 1], terminated=[True, False, False],
                           done=[True, False, False], active=[False, False, False]))
    for k in Sarsa.PENDING:
        np.testing.assert_array_equal(agent.state_dict()["pending"][k], before["pending"][k])
    np.testing.assert_array_equal(agent.q, before["q"])


def test_expected_sarsa_update_by_hand() -> None:
    """Target r + gamma * sum_a' pi(a'|s') Q(s', a'), pi epsilon-greedy at the step's epsilon
    with greedy ties split evenly; r alone at a terminal s'; epsilon 0 is Q-learning."""
    agent = ExpectedSarsa(3, 4, seeds=[0, 1, 2], lr=0.5, gamma=np.array([0.9, 0.9, 0.5]))
    agent.q[:, 1] = [1.0, 3.0, 3.0, 0.0]  # two greedy actions
    agent.q[1, 0, 2] = 2.0
    agent.act(np.zeros(3, dtype=np.int64), np.array([0.2, 0.2, 0.0]))
    upd = agent.learn(transition(state=[0, 0, 0], action=[0, 2, 3], reward=[1, 1, 0],
                                 next_state=[1, 1, 1], terminated=[False, True, False],
                                 done=[False, True, False], active=[True, True, True]))
    # replica 0: pi(.|1) = [0.05, 0.45, 0.45, 0.05]: expectation 0.05 + 1.35 + 1.35 = 2.75;
    # target 1 + 0.9 * 2.75 = 3.475; Q = 0.5 * 3.475 = 1.7375
    assert agent.q[0, 0, 0] == pytest.approx(1.7375, abs=1e-14)
    # replica 1: terminal, target 1: 2 + 0.5 * (1 - 2) = 1.5
    assert agent.q[1, 0, 2] == pytest.approx(1.5, abs=1e-15)
    # replica 2: epsilon 0, target 0.5 * max Q(1) = 1.5: 0.5 * 1.5 = 0.75 (Q-learning's)
    assert agent.q[2, 0, 3] == pytest.approx(0.75, abs=1e-15)
    np.testing.assert_allclose(upd.abs_delta, [1.7375, 0.5, 0.75], atol=1e-14)
    np.testing.assert_array_equal(upd.count, [1, 1, 1])
    before = agent.q.copy()
    upd = agent.learn(transition(state=[2, 2, 2], action=[0, 0, 0], reward=[1, 1, 1],
                                 next_state=[1, 1, 1], terminated=[True, True, True],
                                 done=[True, True, True], active=[False, True, False]))
    changed = agent.q != before
    assert changed.sum() == 1 and changed[1, 2, 0]
    np.testing.assert_array_equal(upd.count, [0, 1, 0])


def test_double_q_update_by_hand() -> None:
    """The coin picks the table to update; that table picks a' (ties: the other table's mean
    over them), the other values it; r alone at a terminal s'. Q1 + Q2 is what the agent acts
    on and q_values() is its mean."""
    R = 16
    agent = DoubleQ(3, 3, seeds=range(R), lr=0.5, gamma=0.9)
    agent.q1[:, 1] = [0.5, 0.5, 0.1]  # Q1's argmax at s' = 1: a tie of actions 0 and 1
    agent.q2[:, 1] = [0.2, 0.6, 9.0]  # Q2's argmax: action 2
    agent.q1[:, 0, 1], agent.q2[:, 0, 1] = 0.4, -0.2
    agent.load_state_dict(agent.state_dict())  # Q1 + Q2 recomputed from the tables
    coin = copy.deepcopy(agent._rand).take(1)[:, 0]
    before = agent.state_dict()
    agent.learn(transition(state=[0] * R, action=[1] * R, reward=[1] * R, next_state=[1] * R,
                           terminated=[False] * R, done=[False] * R, active=[True] * R))
    q1_updated = coin < 0.5
    assert 0 < q1_updated.sum() < R  # both cases occur among these seeds
    # Q1: target 1 + 0.9 * mean(Q2(1, 0), Q2(1, 1)) = 1 + 0.9 * 0.4 = 1.36; 0.4 + 0.5 * 0.96
    # Q2: target 1 + 0.9 * Q1(1, 2) = 1.09;                               -0.2 + 0.5 * 1.29
    want_q1 = np.where(q1_updated, 0.88, 0.4)
    want_q2 = np.where(q1_updated, -0.2, 0.445)
    np.testing.assert_allclose(agent.q1[:, 0, 1], want_q1, atol=1e-15)
    np.testing.assert_allclose(agent.q2[:, 0, 1], want_q2, atol=1e-15)
    assert ((agent.q1 != before["q1"]).sum(axis=(1, 2)) == q1_updated).all()
    assert ((agent.q2 != before["q2"]).sum(axis=(1, 2)) == ~q1_updated).all()
    np.testing.assert_array_equal(agent.q, agent.q1 + agent.q2)
    np.testing.assert_array_equal(agent.q_values(), (agent.q1 + agent.q2) / 2)
    np.testing.assert_array_equal(agent.greedy_policy(), (agent.q1 + agent.q2).argmax(axis=2))
    # terminal: target r; an inactive replica changes nothing
    before = agent.state_dict()
    agent.learn(transition(state=[2] * R, action=[0] * R, reward=[1] * R, next_state=[1] * R,
                           terminated=[True] * R, done=[True] * R,
                           active=[k == 0 for k in range(R)]))
    assert agent.q1[0, 2, 0] + agent.q2[0, 2, 0] == 0.5
    assert_same_state(before["q1"][1:], agent.q1[1:], "q1")
    assert_same_state(before["q2"][1:], agent.q2[1:], "q2")


def updated_tables(agent: DoubleQ, active: np.ndarray) -> np.ndarray:
    """(R,) which table (0: Q1, 1: Q2, -1: none) one learning step on zeroed tables updates."""
    agent.tables[...] = 0.0
    agent.q[...] = 0.0
    R = agent.replicas
    ones = np.ones(R)
    agent.learn(Transition(np.zeros(R, np.int64), np.zeros(R, np.int64), ones,
                           np.ones(R, np.int64), np.zeros(R, bool), np.zeros(R, bool), active))
    return np.where(agent.q1[:, 0, 0] != 0, 0, np.where(agent.q2[:, 0, 0] != 0, 1, -1))


def test_double_q_coin_is_fair_and_per_replica() -> None:
    """Each replica's coin is its own stream's: replica k of a batch flips the sequence seed k
    flips alone, whatever its batch-mates do (active or not), and each table gets half."""
    n = 2000
    batch = DoubleQ(2, 2, seeds=[0, 1, 2], lr=0.5, gamma=0.9)
    alone = DoubleQ(2, 2, seeds=[1], lr=0.5, gamma=0.9)
    rng = np.random.default_rng(0)
    flips = []
    for _ in range(n):
        active = np.array([rng.random() < 0.5, True, rng.random() < 0.5])
        got = updated_tables(batch, active)
        assert (got[~active] == -1).all()
        mine = updated_tables(alone, np.ones(1, bool))
        assert got[1] == mine[0]
        flips.append(np.where(active, got, -1))
    flips = np.array(flips)
    share = (flips[:, 1] == 0).mean()
    assert abs(share - 0.5) < 0.04, share  # 1/sqrt(2000) = 0.011 standard deviations: 3.5 sd
    both = (flips[:, 0] >= 0) & (flips[:, 2] >= 0)
    assert (flips[both, 0] != flips[both, 2]).mean() == pytest.approx(0.5, abs=0.06)


# ------------------------------------------------- references replayed against real training

def epsilon_greedy(q: np.ndarray, epsilon: float, u: np.ndarray) -> int:
    """The action ``act()`` takes from values ``q`` with one replica's numbers ``u`` (2 + A)."""
    if u[0] < epsilon:
        return int(u[1] * len(q))
    ties = np.flatnonzero(q == q.max())
    return int(ties[np.argmax(u[2:][ties])])


class Reference:
    """One replica of the book's algorithm in plain Python, fed the lock-steps the batched
    agent saw; keeps the per-episode mean |dQ| (the Q-delta)."""

    def __init__(self, agent, k: int, lr: float, gamma: float) -> None:
        self.kind = type(agent).__name__
        self.tables = ([agent.q1[k].copy(), agent.q2[k].copy()] if self.kind == "DoubleQ"
                       else [agent.q[k].copy()])
        self.lr, self.gamma = lr, gamma
        self.pending: tuple | None = None
        self.deltas: list[float] = []
        self.q_delta: list[float] = []

    def q(self) -> np.ndarray:
        return (self.tables[0] + self.tables[1]) / 2 if self.kind == "DoubleQ" else self.tables[0]

    def _apply(self, table: np.ndarray, s: int, a: int, target: float) -> None:
        d = self.lr * (target - table[s, a])
        table[s, a] += d
        self.deltas.append(abs(d))

    def step(self, s, a, r, s2, term, done, epsilon: float, u: np.ndarray) -> None:
        """One step; ``u``: the replica's numbers ``learn`` draws this step (its stream's)."""
        if self.kind == "Sarsa":
            q = self.tables[0]
            if self.pending is not None:  # a = the a' of the previous step, taken from s = s'
                ps, pa, pr = self.pending
                self._apply(q, ps, pa, pr + self.gamma * q[s, a])
                self.pending = None
            if term:
                self._apply(q, s, a, r)
            elif done:  # truncated: a' as act() would draw it from s'
                self._apply(q, s, a, r + self.gamma * q[s2, epsilon_greedy(q[s2], epsilon, u)])
            else:
                self.pending = (s, a, r)
        elif self.kind == "ExpectedSarsa":
            q = self.tables[0]
            n = q.shape[1]
            pi = np.full(n, epsilon / n)
            best = np.flatnonzero(q[s2] == q[s2].max())
            pi[best] += (1 - epsilon) / len(best)
            self._apply(q, s, a, r + (0.0 if term else self.gamma * float(pi @ q[s2])))
        else:
            upd, other = (self.tables if u[0] < 0.5 else self.tables[::-1])
            best = np.flatnonzero(upd[s2] == upd[s2].max())
            self._apply(upd, s, a, r + (0.0 if term else self.gamma * other[s2, best].mean()))
        if done:
            self.q_delta.append(float(np.mean(self.deltas)) if self.deltas else 0.0)
            self.deltas = []


def replica_rows(state: dict, active: np.ndarray) -> dict:
    """The rows of ``~active`` replicas of every per-replica array of an agent's state."""
    out = {}
    for k, v in state.items():
        if isinstance(v, dict) and k != "rand":
            out.update({f"{k}.{n}": a for n, a in replica_rows(v, active).items()})
        elif isinstance(v, np.ndarray) and v.shape[:1] == active.shape:
            out[k] = v[~active].copy()
    return out


@pytest.mark.parametrize("name", AGENTS)
def test_matches_reference_and_q_delta_is_mean_abs_change(compose_cfg, name: str) -> None:
    """Every Q of every replica equals the reference's after every lock-step (with episodes
    truncated at 12 steps and epsilon decaying per step); replicas that finished change
    nothing (Q, tables, pending updates); train/q_delta is the mean |dQ| per episode."""
    R, episodes, lr, gamma = 3, 40, 0.5, 0.9
    c = validate(compose_cfg([f"agent={name}", "env=griddy", "env.max_steps=12", "~hparams",
                              f"replicas={R}", f"episodes={episodes}", f"agent.lr={lr}",
                              f"agent.gamma={gamma}", "agent.init=0.2",
                              "exploration.name=exponential", "exploration.unit=step",
                              "exploration.decay=0.995", "eval_every=10"]))
    seeds = list(range(R))
    env = envs.make(c.env, seeds)
    agent = agents.make(c.agent, env, seeds)
    refs = [Reference(agent, k, lr, gamma) for k in range(R)]
    act, learn = agent.act, agent.learn
    seen = {"epsilon": None, "inactive": 0, "truncated": 0}

    def recording_act(state, epsilon):
        seen["epsilon"] = np.array(epsilon, dtype=np.float64)
        return act(state, epsilon)

    def checked_learn(tr: Transition):
        draws = {"Sarsa": 2 + agent.n_actions, "DoubleQ": 1}.get(type(agent).__name__, 0)
        u = copy.deepcopy(agent._rand).take(draws)  # what learn draws now, per replica
        frozen = replica_rows(agent.state_dict(), tr.active)
        upd = learn(tr)
        assert_same_state(frozen, replica_rows(agent.state_dict(), tr.active))
        seen["inactive"] += int((~tr.active).any())
        for k in np.flatnonzero(tr.active):
            seen["truncated"] += int(tr.done[k] and not tr.terminated[k])
            refs[k].step(tr.state[k], tr.action[k], tr.reward[k], tr.next_state[k],
                         tr.terminated[k], tr.done[k], seen["epsilon"][k], u[k])
            np.testing.assert_allclose(agent.q_values()[k], refs[k].q(), rtol=0, atol=1e-12)
        return upd

    agent.act, agent.learn = recording_act, checked_learn
    hist = driver.train(Job(env, agent, exploration.make(c.exploration, R), episodes,
                            c.eval_every), fast="off")
    assert seen["inactive"] > 0 and seen["truncated"] > 0
    for k in range(R):
        assert len(refs[k].q_delta) == episodes
        np.testing.assert_allclose(hist.train["train/q_delta"][k], refs[k].q_delta,
                                   rtol=0, atol=1e-12)


# ------------------------------------------------------------ learning, against value iteration

GRIDS = {"griddy": ["env=griddy"], "griddy8": ["env=griddy8"],
         "griddy3x7": ["env=griddy", "env.height=3", "env.width=7"]}


def train_tuned(compose_cfg, agent: str, overrides: list[str]):
    """Train ``agent`` with its tuned settings (conf/hparams, picked by agent and env) on seeds
    0..4 as one batch, with the stepper qlab-train picks; no evaluations during training."""
    c = validate(compose_cfg([f"agent={agent}", *overrides, "replicas=5", "seed=0",
                              "tracking.enabled=false"]))
    assert Path(CONF_DIR, "hparams", f"{agent}_{c.env.name}.yaml").exists()
    job = dataclasses.replace(build(c), evaluator=None, eval_every=c.episodes)
    driver.train(job, fast=c.fast)
    return c, job.env.model, job.agent


@pytest.mark.parametrize("grid", list(GRIDS))
@pytest.mark.parametrize("name", AGENTS)
def test_tuned_agent_finds_the_optimal_policy(compose_cfg, name: str, grid: str) -> None:
    """The final greedy action is optimal (value iteration's Q*, ties allowed) in every state
    where the agent acts, in every replica."""
    c, model, agent = train_tuned(compose_cfg, name, GRIDS[grid])
    evaluate = Evaluator(model, agent.gamma)
    final = np.array([evaluate(k, q)["eval/optimal_fraction"]
                      for k, q in enumerate(agent.q_values())])
    assert np.all(final == 1.0), f"optimal fraction per seed: {final}"


@pytest.mark.slow
@pytest.mark.parametrize("name", AGENTS)
def test_tuned_agent_near_optimal_on_frozenlake(compose_cfg, name: str) -> None:
    """The final greedy policy's exact value from the start (horizon 100) is within 0.02 of
    V*, the finite-horizon optimum, in every replica."""
    c, model, agent = train_tuned(compose_cfg, name, ["env=frozenlake"])
    gamma = c.agent.gamma
    v_star = model.initial @ value_iteration(model, gamma, horizon=model.max_steps).v
    gaps = np.array([v_star - model.initial @ policy_value(model, pi, gamma)
                     for pi in agent.greedy_policy()])
    assert np.all(gaps <= 0.02), f"V* - V(greedy) per seed: {gaps}"


# ------------------------------------------------------------ cliff walking (Example 6.6)

CLIFF_START, CLIFF_GOAL = 36, 47
CLIFF_EDGE = set(range(25, 35))  # the row above the cliff, between start and goal columns
EDGE_PATH = [36, 24, *range(25, 36), 47]  # the shortest path: 13 steps along the edge


def greedy_path(model, policy: np.ndarray, limit: int = 100) -> list[int]:
    """The states the greedy policy visits from the start of a deterministic model."""
    s, path = CLIFF_START, [CLIFF_START]
    for _ in range(limit):
        a = policy[s]
        s, done = int(model.next_state[s, a, 0]), bool(model.terminal[s, a, 0])
        path.append(s)
        if done:
            break
    return path


@pytest.mark.training
def test_cliff_walking_sarsa_safe_q_learning_on_the_edge(compose_cfg) -> None:
    """Epsilon fixed at 0.1, step size 0.5, gamma 1, 500 episodes, seeds 0..4: Q-learning's
    greedy path is the edge (13 steps) in every seed; SARSA and Expected SARSA, which value
    the epsilon-greedy policy that sometimes steps into the cliff, take a longer path to the
    goal in every seed. Expected SARSA keeps off the edge in every seed (the middle row, 15
    steps); SARSA's noisier values (its target samples a') keep it off in 4 of 5 (the top
    row, 17 steps; seed 4 walks two edge cells before climbing, also 17 steps; 9 of seeds
    0-9 keep off)."""
    paths = {}
    for name in ("tabular_q", "sarsa", "expected_sarsa"):
        c = validate(compose_cfg([f"agent={name}", "env=cliffwalking", "exploration=constant",
                                  "exploration.start=0.1", "agent.lr=0.5", "agent.gamma=1.0",
                                  "agent.init=0.0", "episodes=500", "replicas=5", "seed=0",
                                  "fast=off", "tracking.enabled=false"]))
        job = dataclasses.replace(build(c), evaluator=None, eval_every=c.episodes)
        driver.train(job, fast="off")
        model = job.env.model
        paths[name] = [greedy_path(model, pi) for pi in job.agent.greedy_policy()]
    assert all(p == EDGE_PATH for p in paths["tabular_q"]), paths["tabular_q"]
    for name, keep_off in (("sarsa", 4), ("expected_sarsa", 5)):
        assert all(p[-1] == CLIFF_GOAL and len(p) - 1 > 13 for p in paths[name]), paths[name]
        assert sum(not CLIFF_EDGE & set(p) for p in paths[name]) >= keep_off, paths[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sarsa", "expected_sarsa"])
def test_cliff_walking_decaying_epsilon_keeps_the_safe_path(compose_cfg, name: str) -> None:
    """With epsilon decaying to 0 (x 0.99 per episode, 1000 episodes) the greedy path stays
    the 17-step safe one in every seed, not the 13-step edge (docs/textbook.md says why: the
    edge's values, learned while epsilon was large, are never revisited)."""
    c = validate(compose_cfg([f"agent={name}", "env=cliffwalking", "exploration=exponential",
                              "exploration.start=1.0", "exploration.decay=0.99",
                              "exploration.min=0", "agent.lr=0.5", "agent.gamma=1.0",
                              "agent.init=0.0", "episodes=1000", "replicas=5", "seed=0",
                              "tracking.enabled=false"]))
    job = dataclasses.replace(build(c), evaluator=None, eval_every=c.episodes)
    driver.train(job, fast=c.fast)
    paths = [greedy_path(job.env.model, pi) for pi in job.agent.greedy_policy()]
    assert [len(p) - 1 for p in paths] == [17] * 5, paths


# ------------------------------------------------------------ replicas, inactive, checkpoints

@pytest.mark.parametrize("name", AGENTS)
def test_replica_k_equals_single_run_of_seed_k(compose_cfg, name: str) -> None:
    """Bit for bit: every History table but train/sps, and q_values(). Episodes truncated at
    15 steps (SARSA's own draws); lr < 1 so a finished replica that kept learning shows."""
    common = [f"agent={name}", "env=griddy", "env.max_steps=15", "episodes=25", "eval_every=5",
              "agent.lr=0.5", "exploration.name=exponential", "exploration.decay=0.9",
              "tracking.enabled=false"]
    batch = qlab.run(compose_cfg([*common, "seed=0", "replicas=3"]))
    lengths = batch.history.train["train/episode_length"]
    assert not (lengths == lengths[0]).all()  # the replicas really differ
    for k in range(3):
        alone = qlab.run(compose_cfg([*common, f"seed={k}", "replicas=1"]))
        assert_same_history(batch.history, alone.history, [k], [0])
        np.testing.assert_array_equal(batch.q_values[k], alone.q_values[0])


@pytest.mark.parametrize("name", AGENTS)
def test_stop_at_checkpoint_then_resume_equals_uninterrupted(compose_cfg, name: str,
                                                             tmp_path: Path) -> None:
    """state_dict (Q or both tables, the stream, SARSA's pending updates) -> checkpoint file
    -> fresh objects -> continue gives the same history and agent state as never stopping
    (on the compiled stepper, which fast=auto picks; the streams compared by the numbers
    they give next)."""
    c = validate(compose_cfg([f"agent={name}", "env=griddy", "env.max_steps=15",
                              "episodes=60", "eval_every=5", "agent.lr=0.5", "replicas=2",
                              "tracking.enabled=false"]))
    ref_job, ref, (header, _), job2, out = checkpoint_round_trip(c, tmp_path / "ckpt.npz", 10)
    assert min(header["episodes_done"]) == 20
    assert_same_history(ref, out)
    want, got = ref_job.agent.state_dict(), job2.agent.state_dict()
    assert_same_state({k: v for k, v in want.items() if k != "rand"},
                      {k: v for k, v in got.items() if k != "rand"})
    np.testing.assert_array_equal(next_uniforms(ref_job.agent._rand),
                                  next_uniforms(job2.agent._rand))


# ------------------------------------------------------------ qlab-train's path

@pytest.mark.training
def test_trained_and_tracked_end_to_end(mlflow_uri: str, compose_cfg, tmp_path: Path) -> None:
    """qlab.app.train.run (what qlab-train calls) trains and records each agent: FINISHED runs
    with its tag and params, the metrics every agent has, q_table.npy equal to q_values()
    (Double Q: their mean, and both tables)."""
    client = MlflowClient(mlflow_uri)
    for name in AGENTS:
        result = qlab.app.train.run(compose_cfg([f"agent={name}", "env=griddy", "replicas=2",
                                                 "episodes=30", "eval_every=10",
                                                 f"experiment_name=td-{name}"]))
        assert len(result.run_ids) == 2
        for k, run_id in enumerate(result.run_ids):
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            assert run.data.tags["agent"] == name and run.data.tags["seed"] == str(k)
            assert run.data.params["agent.lr"] == str(result.config.agent.lr)
            assert {"train/q_delta", "train/episode_return", "train/epsilon", "eval/return",
                    "eval/q_error", "eval/optimal_fraction"} <= set(run.data.metrics)
            files = {a.path for a in client.list_artifacts(run_id)}
            assert "q_table.npy" in files
            q = np.load(client.download_artifacts(run_id, "q_table.npy", str(tmp_path)))
            np.testing.assert_array_equal(q, result.q_values[k])
            if name == "double_q":
                assert {"q1.npy", "q2.npy"} <= files
                q1 = np.load(client.download_artifacts(run_id, "q1.npy", str(tmp_path)))
                q2 = np.load(client.download_artifacts(run_id, "q2.npy", str(tmp_path)))
                np.testing.assert_array_equal(q, (q1 + q2) / 2)


@pytest.mark.parametrize("name", AGENTS)
def test_compiled_stepper_picked_and_masked_env_refused(monkeypatch, capsys, compose_cfg,
                                                        tmp_path: Path, name: str) -> None:
    """fast=auto trains on the compiled stepper (tests/test_fastpath.py: bit for bit the
    numpy reference); on maxbias, whose legal-action masks and reward noise the kernels do
    not implement, fast=auto falls back to numpy and fast=on is refused in one line, exit
    code 2, before any store is touched."""
    from qlab.core.compiled import CompiledStepper

    job = build(validate(compose_cfg([f"agent={name}", "tracking.enabled=false"])))
    assert driver.stepper_type(job, "auto") is CompiledStepper
    job = build(validate(compose_cfg([f"agent={name}", "env=maxbias",
                                      "tracking.enabled=false"])))
    assert driver.stepper_type(job, "auto") is NumpyStepper
    monkeypatch.setattr(sys, "argv", ["qlab-train", f"agent={name}", "env=maxbias", "fast=on"])
    with pytest.raises(SystemExit) as exit_info:
        qlab.cli.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "qlab-train: error: fast='on': env=maxbias: the kernels do not act by per-state legal "
        "actions (env has action masks); use fast=auto or fast=off"]
    assert not (tmp_path / "mlflow.db").exists(), "the store was touched"
