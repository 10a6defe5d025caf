"""The compiled tabular fast path gives exactly the numpy reference's results — every
History table (train/sps aside: wall-clock), every evaluation, every Q table, bit for bit —
and the dispatch picks it, or refuses, as configured."""

from __future__ import annotations

import numpy as np
import pytest

import qlab.train
from qlab import agents, envs, exploration, fastpath, runner
from qlab.agents.mc import TabularMC
from qlab.agents.qlearning import TabularQ
from qlab.config import ConfigError, validate
from qlab.envs.griddy import griddy_model
from qlab.envs.vector import TabularVecEnv
from qlab.exploration import Schedule


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
    from qlab.agents import kernels

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
    c = validate(compose_cfg(overrides))
    seeds = [c.seed + k for k in range(c.replicas)]
    env = envs.make(c.env, seeds)
    agent = agents.make(c.agent, env, seeds) if c.agent.name != "dqn" else None
    return c, env, agent, exploration.make(c.exploration, c.replicas)


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
    from qlab.preflight import check

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
    hist, ids = qlab.train.run(compose_cfg(["episodes=4", "replicas=2", f"fast={fast}",
                                            "tracking.enabled=false"]))
    assert used == [expected] and hist.done.tolist() == [4, 4]
