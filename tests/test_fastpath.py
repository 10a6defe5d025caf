"""The compiled tabular fast path gives exactly the numpy reference's results — every
History table (train/sps aside: wall-clock), every evaluation, every Q table, bit for bit —
and the dispatch picks it, or refuses, as configured."""

from __future__ import annotations

import numpy as np
import pytest

import qlab.app.train
from qlab.config import ConfigError, validate
from qlab.core import agents, envs, exploration, fastpath, runner
from qlab.core.agents.mc import TabularMC
from qlab.core.agents.qlearning import TabularQ
from qlab.core.envs.griddy import griddy_model
from qlab.core.envs.vector import TabularVecEnv
from qlab.core.exploration import Schedule
from tests.helpers import build


def bits(x: np.ndarray) -> np.ndarray:
    """Floats as their bit patterns, so NaN == NaN and -0.0 != 0.0."""
    x = np.ascontiguousarray(x)
    return x.view(np.int64) if x.dtype == np.float64 else x


def assert_same(ref: runner.History, fast: runner.History, q_ref, q_fast) -> None:
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
         total_steps: int | None = None, **fast_kw) -> tuple[runner.History, runner.History]:
    """Train fresh copies with the reference and the fast path (given ``fast_kw`` too);
    check they agree."""
    out = []
    for train, kw in ((runner.train, {}), (fastpath.train, fast_kw)):
        env = make_env()
        agent = make_agent(env)
        ev = runner.Evaluator(env.model, agent.gamma)
        hist = train(env, agent, sched, episodes, eval_every, ev, total_steps=total_steps, **kw)
        out.append((hist, agent.q.copy()))
    (ref, q_ref), (fast, q_fast) = out
    assert_same(ref, fast, q_ref, q_fast)
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
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("seeds", [[0], [11, 12, 13, 14, 15]], ids=["R=1", "R=5"])
def test_fast_path_equals_reference_bitwise(name: str, seeds: list[int]) -> None:
    h, w, goal, kind, kw, sch, episodes, every, budget = CASES[name]
    max_steps = None if name == "mc no time limit" else 200
    if kind in ("step", "episode"):
        make_agent = q_agent(seeds, kind, **kw)
    else:
        make_agent = mc_agent(seeds, kind == "mc-first", **kw)
    ref, _ = both(grid(h, w, seeds, goal, max_steps), make_agent,
                  schedule(R=len(seeds), **sch), episodes, every, budget)
    assert (ref.done > 0).all() and np.isfinite(ref.evals["eval/q_error"][:, 0]).all()
    if budget is not None:  # the step budget cut the run short, mid-episode
        lengths = np.nansum(ref.train["train/episode_length"], axis=1)
        assert (lengths == budget).all() and (ref.done < episodes).all()


def test_random_hyperparameters_and_sizes_agree() -> None:
    rng = np.random.default_rng(2026)
    for trial in range(8):
        h, w = int(rng.integers(2, 7)), int(rng.integers(1, 7))
        R = int(rng.integers(1, 4))
        seeds = [int(s) for s in rng.integers(0, 2**32 - 1, R)]
        lr, gamma = float(rng.uniform(0.01, 1.0)), float(rng.uniform(0.5, 1.0))
        init = float(rng.choice([0.0, 1.0, -0.5]))
        kind = ("step", "episode", "mc", "mc-first")[trial % 4]
        make_agent = (q_agent(seeds, kind, lr, gamma, init) if kind in ("step", "episode")
                      else mc_agent(seeds, kind == "mc-first", lr, gamma, init))
        sched = schedule(("exponential", "linear", "constant")[trial % 3], R,
                         unit=("episode", "step")[trial % 2], decay=float(rng.uniform(0.9, 1)),
                         start=float(rng.uniform(0.3, 1)), minimum=0.0,
                         duration=float(rng.integers(1, 2000)))
        both(grid(h, w, seeds, bool(trial % 2), 150), make_agent, sched,
             int(rng.integers(5, 60)), int(rng.integers(1, 20)))


def test_refills_buffer_growth_and_chunking_keep_results(monkeypatch) -> None:
    """Tiny uniform blocks (a refill every step), a 1-step episode buffer (grown over and
    over), one episode per chunk and a flush every chunk change nothing."""
    monkeypatch.setattr(fastpath, "UNIFORM_BLOCK", 7)
    monkeypatch.setattr(fastpath, "EPISODE_CAPACITY", 1)
    monkeypatch.setattr(fastpath, "FIRST_LIMIT", 1)
    seeds = [3, 4, 5]

    class Recorder:
        def __init__(self) -> None:
            self.done: list[list[int]] = []

        def update(self, hist: runner.History) -> None:
            self.done.append(hist.done.tolist())

    for make_agent in (q_agent(seeds, "episode"), mc_agent(seeds, True), q_agent(seeds)):
        rec = Recorder()
        _, fast = both(grid(4, 5, seeds), make_agent, schedule("exponential", 3), 30, 4,
                       listeners=[rec], flush_seconds=1e-9)
        progress = np.array(rec.done)
        assert len(progress) > 3 and (np.diff(progress, axis=0) >= 0).all()
        assert progress[-1].tolist() == [30, 30, 30]
        assert (fast.train["train/sps"] > 0).all()


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

def _objects(compose_cfg, overrides):
    c, env, agent, schedule, _ = build(compose_cfg(overrides))
    return c, env, agent, schedule


def test_choose_picks_the_fast_path_when_supported(compose_cfg) -> None:
    for overrides in (["agent=tabular_q"], ["agent=tabular_mc", "env=frozenlake"],
                      ["agent=tabular_q", "agent.update=episode", "exploration=linear"]):
        c, env, agent, sched = _objects(compose_cfg, overrides)
        assert fastpath.choose("auto", env, agent, sched) is fastpath.train
        assert fastpath.choose("on", env, agent, sched) is fastpath.train
        assert fastpath.choose("off", env, agent, sched) is runner.train


def test_choose_refuses_unsupported_with_one_line(compose_cfg) -> None:
    c, env, agent, sched = _objects(compose_cfg, ["agent=tabular_q"])

    class Subclassed(TabularQ):  # an agent the kernel does not know
        pass

    other = Subclassed(env.n_states, env.n_actions, [0], 0.1, 0.9)
    assert fastpath.choose("auto", env, other, sched) is runner.train
    with pytest.raises(ConfigError) as err:
        fastpath.choose("on", env, other, sched)
    assert "\n" not in str(err.value) and str(err.value).startswith("fast='on': agent Subclassed")
    with pytest.raises(ConfigError, match="fast='fastest': must be one of auto, on, off"):
        fastpath.choose("fastest", env, agent, sched)
    with pytest.raises(ValueError, match="fastpath.train: agent Subclassed"):
        fastpath.train(env, other, sched, 3, 1)


def test_a_patched_agent_or_env_keeps_the_reference(compose_cfg, monkeypatch) -> None:
    """Methods replaced from outside qlab (tests inject failures so) cannot run compiled:
    ``auto`` falls back to the numpy path, ``on`` refuses."""
    c, env, agent, sched = _objects(compose_cfg, ["agent=tabular_q"])
    learn = agent.learn
    agent.learn = lambda tr: learn(tr)
    assert fastpath.choose("auto", env, agent, sched) is runner.train
    with pytest.raises(ConfigError, match="agent method.s. learn replaced from outside qlab"):
        fastpath.choose("on", env, agent, sched)
    c, env, agent, sched = _objects(compose_cfg, ["agent=tabular_mc"])
    step = TabularVecEnv.step
    monkeypatch.setattr(TabularVecEnv, "step", lambda self, a: step(self, a))
    assert fastpath.unsupported(env, agent, sched) == (
        "env method(s) step replaced from outside qlab")


def test_config_checks_fast(compose_cfg) -> None:
    with pytest.raises(ConfigError, match=r"^fast='sometimes': must be one of auto, on, off"):
        validate(compose_cfg(["fast=sometimes"]))
    with pytest.raises(ConfigError, match=r"^fast='on': the compiled fast path runs tabular_q "
                                          r"and tabular_mc only, not agent=dqn"):
        validate(compose_cfg(["fast=on", "agent=dqn", "env=cartpole"]))
    assert validate(compose_cfg(["fast=off", "agent=dqn", "env=cartpole"])).fast == "off"
    assert validate(compose_cfg([])).fast == "auto"
    from qlab.sweeps.preflight import check

    assert check(["fast=on", "agent=dqn", "env=cartpole"]) == [
        "fast='on': the compiled fast path runs tabular_q and tabular_mc only, not agent=dqn; "
        "use fast=auto or fast=off"]


@pytest.mark.parametrize("fast, expected", [("auto", "fast"), ("on", "fast"), ("off", "ref")])
def test_train_run_dispatches(compose_cfg, monkeypatch, fast, expected) -> None:
    used = []
    real_fast, real_ref = fastpath.train, runner.train
    monkeypatch.setattr(fastpath, "train",
                        lambda *a, **k: used.append("fast") or real_fast(*a, **k))
    monkeypatch.setattr(runner, "train", lambda *a, **k: used.append("ref") or real_ref(*a, **k))
    hist, ids = qlab.app.train.run(compose_cfg(["episodes=4", "replicas=2", f"fast={fast}",
                                            "tracking.enabled=false"]))
    assert used == [expected] and hist.done.tolist() == [4, 4]


# ------------------------------------------------------------------ checkpoints and resume

class Crash(Exception):
    """Stands in for a process dying right after a checkpoint."""


def next_uniforms(rand, n: int = 300) -> np.ndarray:
    """(R, n) the numbers a ReplicaUniforms hands out next (it is not changed)."""
    from qlab.core.rng import generator_from_state

    st = rand.state()
    return np.stack([np.concatenate([row, generator_from_state(g).random(n)])[:n]
                     for row, g in zip(st["buf"], st["gens"], strict=True)])


CKPT_AGENTS = {"q-step": lambda s: q_agent(s, init=0.5),
               "q-episode": lambda s: q_agent(s, "episode"),
               "mc-first-visit": lambda s: mc_agent(s, True, lr=0.2)}


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

    monkeypatch.setattr(fastpath, "UNIFORM_BLOCK", 16)  # refills: replicas stop mid-episode
    seeds = [3, 4, 5]
    make_env, make_agent = grid(5, 5, seeds, max_steps=60), CKPT_AGENTS[agent_kind](seeds)
    sched, episodes, every = schedule("exponential", 3, decay=0.97), 40, 7

    def build():
        env = make_env()
        agent = make_agent(env)
        return env, agent, runner.Evaluator(env.model, agent.gamma)

    env0, agent0, ev0 = build()
    want = fastpath.train(env0, agent0, sched, episodes, every, ev0, total_steps=budget)
    if budget is not None:  # the budget ends some replicas early
        assert (want.done < episodes).any()
    env1, agent1, ev1 = build()
    path = tmp_path / "ckpt.npz"
    writer = checkpoint.Checkpointer(path, {"job_id": "j"}, env1, agent1, ev1)

    def crash_mid_episode(loop, hist) -> None:  # at a checkpoint after the first that has
        writer(loop, hist)  # a replica mid-episode
        if writer.written >= 2 and (loop["length"] > 0).any():
            raise Crash

    with pytest.raises(Crash):
        (fastpath.train if first == "fast" else runner.train)(
            env1, agent1, sched, episodes, every, ev1, checkpoint=crash_mid_episode,
            checkpoint_every=4, total_steps=budget)
    header, state = checkpoint.read(path)
    loop = state["loop"]
    mark = min(np.asarray(header["episodes_done"])[loop["active"]])
    assert mark % 4 == 0 and 8 <= mark < episodes
    if agent_kind != "q-step":
        assert (state["agent"]["episodes"]["length"] > 0).any()
    for then in (fastpath.train, runner.train):
        env2, agent2, ev2 = build()
        hist, loop2 = runner.History.empty(3, episodes, every, ev2.keys), runner.loop_state(3)
        checkpoint.restore(path, state, env2, agent2, ev2, hist, loop2)
        got = then(env2, agent2, sched, episodes, every, ev2, total_steps=budget,
                   resume=(hist, loop2))
        assert_same(want, got, agent0.q, agent2.q)
        if then is fastpath.train:  # replicas that ran on: streams and env exactly as never stopped
            ran = loop["active"]
            for a, b in ((agent0._rand, agent2._rand), (env0._rand, env2._rand)):
                assert np.array_equal(next_uniforms(a)[ran], next_uniforms(b)[ran])
            assert np.array_equal(env0.state[ran], env2.state[ran])
            assert np.array_equal(env0.elapsed, env2.elapsed)


def test_fast_path_streams_are_advanced_after_training() -> None:
    """After fastpath.train the objects hold the driver's streams: replica k's agent stream
    has given 2 + A numbers per step it took, its env stream 2 per step plus the reset's 2."""
    from qlab.core.rng import ReplicaUniforms

    seeds = [7, 8]
    env = grid(4, 4, seeds)()
    agent = q_agent(seeds)(env)
    hist = fastpath.train(env, agent, schedule("exponential", 2), 25, 5)
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
    want = fastpath.train(env0, agent0, sched, 30, 6, runner.Evaluator(env0.model, agent0.gamma))
    env1 = make_env()
    agent1 = make_agent(env1)
    ev1 = runner.Evaluator(env1.model, agent1.gamma)
    writer = checkpoint.Checkpointer(tmp_path / "c.npz", {}, env1, agent1, ev1)
    calls = iter(range(1, 10**6))
    stop = lambda: KeyboardInterrupt() if next(calls) == 3 else None  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        fastpath.train(env1, agent1, sched, 30, 6, ev1, checkpoint=writer, checkpoint_every=0,
                       stop=stop)
    assert writer.written == 1
    _, state = checkpoint.read(tmp_path / "c.npz")
    assert 0 < state["history"]["done"].min() < 30
    env2 = make_env()
    agent2 = make_agent(env2)
    ev2 = runner.Evaluator(env2.model, agent2.gamma)
    hist, loop = runner.History.empty(2, 30, 6, ev2.keys), runner.loop_state(2)
    checkpoint.restore(tmp_path / "c.npz", state, env2, agent2, ev2, hist, loop)
    assert_same(want, fastpath.train(env2, agent2, sched, 30, 6, ev2, resume=(hist, loop)),
                agent0.q, agent2.q)


def test_tracked_job_checkpoints_on_the_fast_path(compose_cfg, monkeypatch, shared_store,
                                                  experiment) -> None:
    """A tracked job (checkpoints every ``checkpoint_every`` episodes) trains compiled, even
    with ``fast=on``, and hands the fast path the Checkpointer and the stop."""
    calls, real_fast = [], fastpath.train
    monkeypatch.setattr(fastpath, "train", lambda *a, **k: calls.append(k) or real_fast(*a, **k))
    hist, ids = qlab.app.train.run(compose_cfg(["episodes=12", "replicas=2", "fast=on",
                                            "checkpoint_every=4", f"tracking.uri={shared_store}",
                                            f"experiment_name={experiment}"]))
    assert len(calls) == 1 and hist.done.tolist() == [12, 12] and len(ids) == 2
    kw = calls[0]
    assert kw["checkpoint"].written == 2 and kw["checkpoint_every"] == 4  # at 4 and 8 episodes
    assert kw["resume"] is None and kw["stop"] is not None
