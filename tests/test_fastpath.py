"""The compiled tabular fast path gives exactly the numpy reference's results — every
History table (train/sps aside: wall-clock), every evaluation, every Q table, bit for bit —
and the dispatch picks it, or refuses, as configured."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import qlab.app.train
from qlab.app.build import build
from qlab.config import ConfigError, validate
from qlab.core import agents, compiled, driver, envs, exploration
from qlab.core.agents.double_q import DoubleQ
from qlab.core.agents.expected_sarsa import ExpectedSarsa
from qlab.core.agents.mc import TabularMC
from qlab.core.agents.qlearning import TabularQ
from qlab.core.agents.sarsa import Sarsa
from qlab.core.compiled import CompiledStepper
from qlab.core.driver import Job, NumpyStepper
from qlab.core.envs.griddy import griddy_model
from qlab.core.envs.vector import TabularVecEnv
from qlab.core.evaluation import Evaluator
from qlab.core.exploration import Schedule
from qlab.core.history import History, loop_state
from tests.helpers import assert_same_state, next_uniforms


def bits(x: np.ndarray) -> np.ndarray:
    """Floats as their bit patterns, so NaN == NaN and -0.0 != 0.0."""
    x = np.ascontiguousarray(x)
    return x.view(np.int64) if x.dtype == np.float64 else x


def assert_same(ref: History, fast: History, q_ref, q_fast) -> None:
    assert np.array_equal(bits(q_ref), bits(q_fast)), "Q tables differ"
    assert set(ref.train) == set(fast.train) and set(ref.evals) == set(fast.evals)
    for key in ref.train:
        if key == "train/sps":  # wall-clock: only its shape and where it is set
            assert np.array_equal(np.isnan(ref.train[key]), np.isnan(fast.train[key]))
            continue
        assert np.array_equal(bits(ref.train[key]), bits(fast.train[key])), key
    for key in ref.evals:
        assert np.array_equal(bits(ref.evals[key]), bits(fast.evals[key])), key
    for name in ("eval_steps", "done", "evals_done"):
        assert np.array_equal(getattr(ref, name), getattr(fast, name)), name
    assert ref.failed == fast.failed


def schedule(kind: str, R: int, unit: str = "episode", start: float = 1.0,
             decay: float = 0.995, minimum: float = 0.01, duration: float = 300) -> Schedule:
    full = lambda x: np.full(R, float(x))  # noqa: E731
    return Schedule(kind, full(start), full(decay), full(minimum), full(duration), unit)


def both(make_env, make_agent, sched: Schedule, episodes: int, eval_every: int,
         total_steps: int | None = None, **fast_kw) -> tuple[History, History]:
    """Train fresh copies with the reference and the fast path (given ``fast_kw`` too);
    check they agree."""
    out = []
    for fast, kw in (("off", {}), ("on", fast_kw)):
        env = make_env()
        agent = make_agent(env)
        ev = Evaluator(env.model, agent.gamma)
        job = Job(env, agent, sched, episodes, eval_every, ev, total_steps,
                  compiled=CompiledStepper)
        hist = driver.train(job, fast=fast, **kw)
        out.append((hist, agent.q.copy(), agent.state_dict()))
    (ref, q_ref, s_ref), (fast, q_fast, s_fast) = out
    assert_same(ref, fast, q_ref, q_fast)
    for key in ("q1", "q2", "pending"):  # Double Q's tables, SARSA's pending updates
        if key in s_ref:
            assert_same_state(s_ref[key], s_fast[key], key)
    return ref, fast


def grid(h: int, w: int, seeds, random_goal: bool = False, max_steps: int | None = 1000):
    return lambda: TabularVecEnv(griddy_model(h, w, random_goal, max_steps), seeds)


def q_agent(seeds, update: str = "step", lr: float = 0.1, gamma: float = 0.95,
            init: float = 0.0):
    return lambda env: TabularQ(env.n_states, env.n_actions, seeds, lr, gamma, update, init)


def mc_agent(seeds, first_visit: bool = False, lr: float = 0.1, gamma: float = 0.95,
             init: float = 0.0):
    return lambda env: TabularMC(env.n_states, env.n_actions, seeds, lr, gamma, first_visit,
                                 init)


TD_AGENTS = {"sarsa": Sarsa, "expected-sarsa": ExpectedSarsa, "double-q": DoubleQ}


def td_agent(kind: str, seeds, lr: float = 0.1, gamma: float = 0.95, init: float = 0.0):
    """SARSA, Expected SARSA or Double Q (``kind``: a key of TD_AGENTS)."""
    return lambda env: TD_AGENTS[kind](env.n_states, env.n_actions, seeds, lr, gamma, init)


def make_agent_of(kind: str, seeds, **kw):
    if kind in ("step", "episode"):
        return q_agent(seeds, kind, **kw)
    if kind in TD_AGENTS:
        return td_agent(kind, seeds, **kw)
    return mc_agent(seeds, kind == "mc-first", **kw)


# ------------------------------------------------------------------ fast path == reference

CASES = {
    # name: (h, w, random_goal, agent, kwargs, schedule kwargs, episodes, eval_every, budget)
    "q-step 4x4": (4, 4, False, "step", {}, {"kind": "exponential"}, 80, 10, None),
    "q-step 8x8": (8, 8, False, "step", {"lr": 0.5, "gamma": 0.9},
                   {"kind": "exponential", "decay": 0.97}, 60, 25, None),
    "q-episode 3x7": (3, 7, False, "episode", {"init": 0.5},
                      {"kind": "linear", "duration": 40}, 61, 7, None),
    "q-episode 8x8 budget": (8, 8, False, "episode", {},
                             {"kind": "exponential", "unit": "step", "decay": 0.999},
                             200, 9, 2500),
    "q-step random goal": (4, 4, True, "step", {"lr": 0.3},
                           {"kind": "constant", "start": 0.2, "minimum": 0.05}, 90, 20, None),
    "q-step linear per step": (5, 3, False, "step", {"gamma": 1.0},
                               {"kind": "linear", "unit": "step", "duration": 700}, 50, 11,
                               None),
    "mc every-visit 4x4": (4, 4, False, "mc", {}, {"kind": "exponential"}, 70, 10, None),
    "mc first-visit 3x7": (3, 7, False, "mc-first", {"lr": 0.2, "gamma": 0.9},
                           {"kind": "linear", "duration": 30}, 45, 13, None),
    "mc random goal budget": (4, 4, True, "mc-first", {},
                              {"kind": "exponential", "unit": "step", "decay": 0.9995},
                              300, 50, 1500),
    "mc no time limit": (3, 4, False, "mc", {"gamma": 0.99}, {"kind": "constant"}, 40, 40,
                         None),
    "sarsa 4x4 truncated": (4, 4, False, "sarsa", {"lr": 0.5, "init": 0.3},
                            {"kind": "exponential", "unit": "step", "decay": 0.999}, 60, 10,
                            None),
    "sarsa random goal budget": (4, 4, True, "sarsa", {}, {"kind": "linear", "duration": 40},
                                 200, 9, 1800),
    "expected-sarsa 3x7": (3, 7, False, "expected-sarsa", {"lr": 0.3, "gamma": 0.9},
                           {"kind": "exponential", "decay": 0.97}, 60, 25, None),
    "expected-sarsa budget": (5, 3, False, "expected-sarsa", {"init": 0.5},
                              {"kind": "constant", "start": 0.2}, 400, 11, 900),
    "double-q 4x4": (4, 4, False, "double-q", {"lr": 0.5},
                     {"kind": "exponential", "decay": 0.97}, 70, 10, None),
    "double-q random goal budget": (4, 4, True, "double-q", {"init": 0.2},
                                    {"kind": "linear", "unit": "step", "duration": 900}, 200, 13,
                                    1600),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seeds", [[0], [11, 12, 13, 14, 15]], ids=["R=1", "R=5"])
def test_fast_path_equals_reference_bitwise(name: str, seeds: list[int]) -> None:
    h, w, goal, kind, kw, sch, episodes, every, budget = CASES[name]
    max_steps = None if name == "mc no time limit" else 30 if "truncated" in name else 200
    make_agent = make_agent_of(kind, seeds, **kw)
    ref, _ = both(grid(h, w, seeds, goal, max_steps), make_agent,
                  schedule(R=len(seeds), **sch), episodes, every, budget)
    assert (ref.done > 0).all() and np.isfinite(ref.evals["eval/q_error"][:, 0]).all()
    if budget is not None:  # the step budget cut the run short, mid-episode
        lengths = np.nansum(ref.train["train/episode_length"], axis=1)
        assert (lengths == budget).all() and (ref.done < episodes).all()


def test_random_hyperparameters_and_sizes_agree() -> None:
    rng = np.random.default_rng(2026)
    for trial in range(14):
        h, w = int(rng.integers(2, 7)), int(rng.integers(1, 7))
        R = int(rng.integers(1, 4))
        seeds = [int(s) for s in rng.integers(0, 2**32 - 1, R)]
        lr, gamma = float(rng.uniform(0.01, 1.0)), float(rng.uniform(0.5, 1.0))
        init = float(rng.choice([0.0, 1.0, -0.5]))
        kind = ("step", "episode", "mc", "mc-first", *TD_AGENTS)[trial % 7]
        make_agent = make_agent_of(kind, seeds, lr=lr, gamma=gamma, init=init)
        sched = schedule(("exponential", "linear", "constant")[trial % 3], R,
                         unit=("episode", "step")[trial % 2], decay=float(rng.uniform(0.9, 1)),
                         start=float(rng.uniform(0.3, 1)), minimum=0.0,
                         duration=float(rng.integers(1, 2000)))
        both(grid(h, w, seeds, bool(trial % 2), 150), make_agent, sched,
             int(rng.integers(5, 60)), int(rng.integers(1, 20)))


def test_refills_buffer_growth_and_chunking_keep_results(monkeypatch) -> None:
    """Tiny uniform blocks (a refill every step), a 1-step episode buffer (grown over and
    over), one episode per chunk and a flush every chunk change nothing."""
    monkeypatch.setattr(compiled, "UNIFORM_BLOCK", 7)
    monkeypatch.setattr(compiled, "EPISODE_CAPACITY", 1)
    monkeypatch.setattr(compiled, "FIRST_LIMIT", 1)
    seeds = [3, 4, 5]

    class Recorder:
        def __init__(self) -> None:
            self.done: list[list[int]] = []

        def update(self, hist: History) -> None:
            self.done.append(hist.done.tolist())

    for make_agent in (q_agent(seeds, "episode"), mc_agent(seeds, True), q_agent(seeds),
                       td_agent("sarsa", seeds), td_agent("double-q", seeds)):
        rec = Recorder()
        _, fast = both(grid(4, 5, seeds), make_agent, schedule("exponential", 3), 30, 4,
                       listeners=[rec], flush_seconds=1e-9)
        progress = np.array(rec.done)
        assert len(progress) > 3 and (np.diff(progress, axis=0) >= 0).all()
        assert progress[-1].tolist() == [30, 30, 30]
        assert (fast.train["train/sps"] > 0).all()


def test_more_than_256_replicas_agree() -> None:
    """Above 256 replicas ReplicaUniforms draws smaller blocks than the compiled path's, so the
    stream state the kernels hand back buffers more numbers per replica than the reference's
    own block: it must still load (it once failed for every job of R > 256 on the fast path)."""
    seeds = list(range(300))
    both(grid(4, 4, seeds), q_agent(seeds), schedule("exponential", 300), 6, 3)


@pytest.mark.parametrize("overrides", [
    ["env=frozenlake", "episodes=150"],  # slippery: stochastic outcomes
    ["env=taxi", "agent.update=episode", "episodes=40", "eval_every=15"],
    ["env=cliffwalking", "agent=tabular_mc", "episodes=20", "env.max_steps=300"],
], ids=["frozenlake", "taxi", "cliffwalking"])
def test_toy_text_envs_agree(compose_cfg, overrides) -> None:
    c = validate(compose_cfg([*overrides, "replicas=3", "seed=5"]))
    seeds = [c.seed + k for k in range(c.replicas)]
    make_env = lambda: envs.make(c.env, seeds)  # noqa: E731
    make_agent = lambda env: agents.make(c.agent, env, seeds)  # noqa: E731
    both(make_env, make_agent, exploration.make(c.exploration, c.replicas), c.episodes,
         c.eval_every)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_non_finite_q_delta_stops_the_replica_as_in_the_reference() -> None:
    seeds = [0, 1]
    ref, _ = both(grid(3, 7, seeds, max_steps=20), q_agent(seeds, lr=1e308, init=1e308),
                  schedule("exponential", 2), 10, 5)
    assert sorted(ref.failed) == [0, 1] and (ref.done == 1).all()
    assert ref.failed[1] == "replica 1, episode 0: train/q_delta = inf is not finite"


def test_kernel_schedules_match_numpy_bitwise() -> None:
    """The kernel's epsilon (libm pow for the exponential) gives Schedule's bits."""
    from qlab.core.agents import kernels

    rng = np.random.default_rng(0)
    t = np.concatenate([np.arange(2000.0), rng.integers(0, 10**7, 300).astype(float)])
    for d in np.concatenate([rng.uniform(0.5, 1.0, 20), [0.995, 0.99, 0.999, 0.9999, 1.0]]):
        for kind in ("exponential", "linear", "constant"):
            sched = schedule(kind, 1, start=0.9, decay=d, minimum=0.001, duration=d * 3000)
            ref = sched(t[:, None])[:, 0]
            code = exploration.KINDS.index(kind)
            got = np.array([kernels.epsilon(code, x, 0.9, d, 0.001, d * 3000) for x in t])
            assert np.array_equal(bits(ref), bits(got)), (kind, d)


# ------------------------------------------------------------------ dispatch

def test_stepper_type_picks_the_compiled_stepper_when_supported(compose_cfg) -> None:
    for overrides in (["agent=tabular_q"], ["agent=tabular_mc", "env=frozenlake"],
                      ["agent=tabular_q", "agent.update=episode", "exploration=linear"]):
        job = build(compose_cfg(overrides))
        assert job.compiled is CompiledStepper
        assert driver.stepper_type(job, "auto") is CompiledStepper
        assert driver.stepper_type(job, "on") is CompiledStepper
        assert driver.stepper_type(job, "off") is NumpyStepper


def test_unsupported_falls_back_or_refuses_with_one_line(compose_cfg) -> None:
    job = build(compose_cfg(["agent=tabular_q"]))

    class Subclassed(TabularQ):  # may learn otherwise: the kernel does not run it
        pass

    other = dataclasses.replace(job, agent=Subclassed(job.env.n_states, job.env.n_actions,
                                                      [0], 0.1, 0.9))
    assert CompiledStepper.unsupported(other) == "agent Subclassed has no kernel of this stepper"
    assert driver.stepper_type(other, "auto") is NumpyStepper
    with pytest.raises(ConfigError) as err:
        driver.stepper_type(other, "on")
    assert "\n" not in str(err.value) and str(err.value).startswith("fast='on': agent Subclassed")
    with pytest.raises(ConfigError, match="fast='fastest': must be one of auto, on, off"):
        driver.stepper_type(job, "fastest")
    with pytest.raises(ConfigError, match="fast='on': agent Subclassed"):
        driver.train(other, fast="on")
    progress = driver.Progress(other, History.empty(1, 3, 1, ()), loop_state(1))
    with pytest.raises(driver.Unsupported, match="agent Subclassed"):
        CompiledStepper(other, progress, resumed=False)
    dqn = build(compose_cfg(["agent=dqn", "episodes=1"]))
    with pytest.raises(ConfigError, match="fast='on': DQN has no compiled stepper"):
        driver.stepper_type(dqn, "on")


def test_config_checks_fast(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"^fast='sometimes': must be one of auto, on, off"):
        validate(compose_cfg(["fast=sometimes"]))
    with pytest.raises(ConfigError, match=r"^fast='on': agent=dqn has no compiled stepper; "
                                          r"use fast=auto or fast=off"):
        validate(compose_cfg(["fast=on", "agent=dqn", "env=cartpole"]))
    assert validate(compose_cfg(["fast=off", "agent=dqn", "env=cartpole"])).fast == "off"
    assert validate(compose_cfg([])).fast == "auto"
    from qlab.sweeps.preflight import check

    assert check(["fast=on", "agent=dqn", "env=cartpole"]) == [
        "fast='on': agent=dqn has no compiled stepper; use fast=auto or fast=off"]


@pytest.mark.parametrize("fast, expected", [("auto", "fast"), ("on", "fast"), ("off", "ref")])
def test_train_run_dispatches(compose_cfg, monkeypatch, fast, expected) -> None:
    used = set()
    for cls, name in ((CompiledStepper, "fast"), (NumpyStepper, "ref")):
        real = cls.advance
        monkeypatch.setattr(cls, "advance",
                            lambda self, *a, _real=real, _name=name: used.add(_name)
                            or _real(self, *a))
    result = qlab.app.train.run(compose_cfg(["episodes=4", "replicas=2", f"fast={fast}",
                                                "tracking.enabled=false"]))
    hist = result.history
    assert used == {expected} and hist.done.tolist() == [4, 4]


# ------------------------------------------------------------------ checkpoints and resume

class Crash(Exception):
    """Stands in for a process dying right after a checkpoint."""


CKPT_AGENTS = {"q-step": lambda s: q_agent(s, init=0.5),
               "q-episode": lambda s: q_agent(s, "episode"),
               "mc-first-visit": lambda s: mc_agent(s, True, lr=0.2),
               "sarsa": lambda s: td_agent("sarsa", s, lr=0.3),
               "expected-sarsa": lambda s: td_agent("expected-sarsa", s, init=0.2),
               "double-q": lambda s: td_agent("double-q", s, lr=0.4)}


@pytest.mark.parametrize("budget", [None, 560], ids=["episodes", "step-budget"])
@pytest.mark.parametrize("first", ["fast", "ref"])
@pytest.mark.parametrize("agent_kind", CKPT_AGENTS)
def test_checkpoint_of_either_path_resumes_on_either_path(first, agent_kind, budget, tmp_path,
                                                          monkeypatch) -> None:
    """A job checkpointed (every 4 episodes) on the fast path or the reference, crashed
    after a checkpoint with a replica mid-episode and restored into fresh objects, continues
    on the fast path and on the reference to exactly the uninterrupted fast run: histories,
    Q tables, and (for replicas that ran on) the agent's and env's streams and states."""
    from qlab.app import checkpoint

    monkeypatch.setattr(compiled, "UNIFORM_BLOCK", 16)  # refills: replicas stop mid-episode
    seeds = [3, 4, 5]
    make_env, make_agent = grid(5, 5, seeds, max_steps=60), CKPT_AGENTS[agent_kind](seeds)
    sched, episodes, every = schedule("exponential", 3, decay=0.97), 40, 7

    def objects():
        env = make_env()
        agent = make_agent(env)
        return env, agent, Evaluator(env.model, agent.gamma)

    env0, agent0, ev0 = objects()
    def job(env, agent, ev) -> Job:
        return Job(env, agent, sched, episodes, every, ev, budget, compiled=CompiledStepper)

    want = driver.train(job(env0, agent0, ev0), fast="on")
    if budget is not None:  # the budget ends some replicas early
        assert (want.done < episodes).any()
    env1, agent1, ev1 = objects()
    path = tmp_path / "ckpt.npz"
    writer = checkpoint.Checkpointer(path, {"job_id": "j"}, env1, agent1, ev1)

    def crash_mid_episode(loop, hist) -> None:  # at a checkpoint after the first that has
        writer(loop, hist)  # a replica mid-episode
        if writer.written >= 2 and (loop["length"] > 0).any():
            raise Crash

    with pytest.raises(Crash):
        driver.train(job(env1, agent1, ev1), fast="on" if first == "fast" else "off",
                     checkpoint=crash_mid_episode, checkpoint_every=4)
    header, state = checkpoint.read(path)
    loop = state["loop"]
    mark = min(np.asarray(header["episodes_done"])[loop["active"]])
    assert mark % 4 == 0 and 8 <= mark < episodes
    if agent_kind in ("q-episode", "mc-first-visit"):
        assert (state["agent"]["episodes"]["length"] > 0).any()
    if agent_kind == "sarsa":  # an update waits for its a'
        assert state["agent"]["pending"]["pending"].any()
    for then in ("on", "off"):
        env2, agent2, ev2 = objects()
        hist, loop2 = History.empty(3, episodes, every, ev2.keys), loop_state(3)
        checkpoint.restore(path, state, env2, agent2, ev2, hist, loop2)
        got = driver.train(job(env2, agent2, ev2), fast=then, resume=(hist, loop2))
        assert_same(want, got, agent0.q, agent2.q)
        assert_same_state(agent0.state_dict()["q" if agent_kind != "double-q" else "q1"],
                          agent2.state_dict()["q" if agent_kind != "double-q" else "q1"])
        if then == "on":  # replicas that ran on: streams and env exactly as never stopped
            ran = loop["active"]
            for a, b in ((agent0._rand, agent2._rand), (env0._rand, env2._rand)):
                assert np.array_equal(next_uniforms(a)[ran], next_uniforms(b)[ran])
            assert np.array_equal(env0.state[ran], env2.state[ran])
            assert np.array_equal(env0.elapsed, env2.elapsed)


def test_fast_path_streams_are_advanced_after_training() -> None:
    """After compiled training the objects hold the driver's streams: replica k's agent stream
    has given 2 + A numbers per step it took, its env stream 2 per step plus the reset's 2."""
    from qlab.core.rng import ReplicaUniforms

    seeds = [7, 8]
    env = grid(4, 4, seeds)()
    agent = q_agent(seeds)(env)
    job = Job(env, agent, schedule("exponential", 2), 25, 5, compiled=CompiledStepper)
    hist = driver.train(job, fast="on")
    steps = np.nansum(hist.train["train/episode_length"], axis=1).astype(int)
    for rand, stream, per_step, first in ((agent._rand, 1, 2 + env.n_actions, 0),
                                          (env._rand, 0, 2, 2)):
        for k in range(2):
            used = first + per_step * int(steps[k])
            whole = ReplicaUniforms(seeds, stream).take(used + 50)[k]
            assert np.array_equal(next_uniforms(rand, 50)[k], whole[used:])
    assert (env.elapsed == 0).all()


def test_stop_on_the_fast_path_checkpoints_then_raises(tmp_path) -> None:
    """``stop()`` returning a pending Ctrl-C between chunks: a checkpoint of that moment,
    then the exception; resuming from it ends where the uninterrupted run ends."""
    from qlab.app import checkpoint

    seeds = [1, 2]
    make_env, make_agent = grid(4, 6, seeds, max_steps=80), mc_agent(seeds)
    sched = schedule("linear", 2, duration=30)
    env0 = make_env()
    agent0 = make_agent(env0)
    def job(env, agent, ev) -> Job:
        return Job(env, agent, sched, 30, 6, ev, compiled=CompiledStepper)

    want = driver.train(job(env0, agent0, Evaluator(env0.model, agent0.gamma)), fast="on")
    env1 = make_env()
    agent1 = make_agent(env1)
    ev1 = Evaluator(env1.model, agent1.gamma)
    writer = checkpoint.Checkpointer(tmp_path / "c.npz", {}, env1, agent1, ev1)
    calls = iter(range(1, 10**6))
    stop = lambda: KeyboardInterrupt() if next(calls) == 3 else None  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        driver.train(job(env1, agent1, ev1), fast="on", checkpoint=writer, checkpoint_every=0,
                     stop=stop)
    assert writer.written == 1
    _, state = checkpoint.read(tmp_path / "c.npz")
    assert 0 < state["history"]["done"].min() < 30
    env2 = make_env()
    agent2 = make_agent(env2)
    ev2 = Evaluator(env2.model, agent2.gamma)
    hist, loop = History.empty(2, 30, 6, ev2.keys), loop_state(2)
    checkpoint.restore(tmp_path / "c.npz", state, env2, agent2, ev2, hist, loop)
    assert_same(want, driver.train(job(env2, agent2, ev2), fast="on", resume=(hist, loop)),
                agent0.q, agent2.q)


def test_tracked_job_checkpoints_on_the_fast_path(compose_cfg, monkeypatch, shared_store,
                                                  experiment) -> None:
    """A tracked job (checkpoints every ``checkpoint_every`` episodes) trains compiled, even
    with ``fast=on``, and hands the fast path the Checkpointer and the stop."""
    calls, real_train = [], driver.train
    monkeypatch.setattr(driver, "train", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    result = qlab.app.train.run(compose_cfg(["episodes=12", "replicas=2", "fast=on",
                                            "checkpoint_every=4", f"tracking.uri={shared_store}",
                                            f"experiment_name={experiment}"]))
    hist, ids = result.history, result.run_ids
    assert len(calls) == 1 and hist.done.tolist() == [12, 12] and len(ids) == 2
    kw = calls[0]
    assert kw["checkpoint"].written == 2 and kw["checkpoint_every"] == 4  # at 4 and 8 episodes
    assert kw["resume"] is None and kw["stop"] is not None and kw["fast"] == "on"
