"""Tabular section: env steps per second and wall time until the greedy policy is optimal.

Contenders, all with the same hyperparameters — qlab's tuned settings for the grid
(``conf/hparams/tabular_q_griddy*.yaml``: lr, gamma, the exponential epsilon schedule and
the episode budget, read from the composed config so they follow any retuning):

- ``notebook``: the source notebook's loop (:mod:`benchmarks.notebook_baseline`) on the grid —
  the baseline every ratio is against;
- ``gymnasium FrozenLake``: a plain ``gymnasium.make("FrozenLake-v1", is_slippery=False)``
  loop with a numpy Q table and online Q-learning (a different MDP of the same size: holes
  end episodes; its "optimal" is checked against its own Q*);
- ``qlab fast R=1`` and ``qlab fast R=64``: qlab's env, agent and schedule, built as
  ``qlab.app.train.run`` builds them, tracking off, trained by the compiled fast path
  (:mod:`qlab.core.compiled`, what ``qlab-train`` runs by default for tabular agents);
- ``qlab numpy R=1`` and ``qlab numpy R=64``: the same, trained by the numpy reference
  runner (``fast=off``), which gives bit for bit the same results.

The fast path's start-up cost (numba compiling its kernels, or loading them from its cache)
is measured apart, in fresh processes: once with an empty kernel cache, once with a full one.

Every contender's greedy policy is checked against value iteration's optimal actions after
every ``eval_every`` episodes (qlab: its own ``eval/optimal_fraction``); checking time is not
counted. qlab's steps/s come from a second run of the same seed evaluated as ``qlab-train``
evaluates by default (every 25 episodes): the fast path's compiled loop returns to Python at
each evaluation, so evaluating after every episode of a 4x4 grid (~10 steps) measures that
hand-back more than training; its rate is shown too ("evaluated every episode"). "Time to
optimal" is the training time up to the first check after which the policy stays optimal to
the end of the budget. For R = 64 it is the time until all 64 replicas are
optimal, also shown divided by 64 (per replica). Steps/s counts every replica's steps.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from benchmarks import notebook_baseline as nb
from benchmarks.common import (
    Row,
    TimedEvaluator,
    add_ratios,
    check_target,
    compose,
    median,
    stable_index,
)
from qlab.core import driver

ENV_OF_SIZE = {4: "griddy", 8: "griddy8"}
NOTEBOOK, GYM = "notebook", "gymnasium FrozenLake"
GYM_BUDGET = 10  # FrozenLake's episode budget, in multiples of the grid's


def median_time(times: list[float | None]) -> float | None:
    """The median time to optimal over runs, a run that never got there counting as
    infinitely long; None when that median is infinite (most runs never got there)."""
    if not times:
        return None
    m = statistics.median([math.inf if t is None else t for t in times])
    return None if math.isinf(m) else m


@dataclass(frozen=True)
class Settings:
    """The hyperparameters every contender uses (qlab's composed config for the grid)."""

    size: int
    lr: float
    gamma: float
    start: float
    decay: float
    minimum: float
    episodes: int
    max_steps: int

    def epsilon(self, episode: int) -> float:
        return max(self.minimum, self.start * self.decay ** episode)


def _overrides(size: int) -> list[str]:
    env = ENV_OF_SIZE.get(size)
    if env is not None:
        return [f"env={env}"]
    return ["env=griddy", f"env.height={size}", f"env.width={size}"]


def settings(size: int, episodes: int | None = None) -> Settings:
    from qlab.config import validate

    c = validate(compose(_overrides(size) + ["agent=tabular_q"]))
    if c.exploration.name != "exponential" or c.exploration.unit != "episode":
        raise ValueError(f"tabular bench: expected an exponential per-episode schedule, got "
                         f"{c.exploration.name}/{c.exploration.unit}")
    return Settings(size, c.agent.lr, c.agent.gamma, c.exploration.start, c.exploration.decay,
                    c.exploration.min, episodes or c.episodes, c.env.max_steps or 1000)


def _checked(eval_every: int, episodes: int, episode: int) -> bool:
    return (episode + 1) % eval_every == 0 or episode == episodes - 1


def _result(steps: float, seconds: float, checks: list[tuple[int, float, bool]]) -> dict:
    j = stable_index(np.array([ok for _, _, ok in checks]))
    return {"steps": float(steps), "seconds": seconds,
            "time_to_optimal": None if j is None else checks[j][1],
            "episodes_to_optimal": None if j is None else checks[j][0]}


# ------------------------------------------------------------------------- contenders

def run_notebook(hp: Settings, seed: int, eval_every: int = 1) -> dict:
    """The source notebook's loop on the grid; its greedy policy checked against Q*."""
    from qlab.config import validate
    from qlab.core import envs, oracle

    c = validate(compose(_overrides(hp.size)))
    model = envs.make_model(c.env)
    sol, acting = oracle.value_iteration(model, hp.gamma), model.acting_states
    checks: list[tuple[int, float, bool]] = []

    def on_episode(episode: int, q: dict, seconds: float) -> None:
        if _checked(eval_every, hp.episodes, episode):
            policy = nb.greedy_policy_table(dict(q), hp.size, hp.size)
            checks.append((episode, seconds, bool(sol.is_optimal(policy)[acting].all())))

    if hp.start != 1.0:
        raise ValueError("the source notebook baseline starts epsilon at 1")
    _, steps, seconds = nb.train(hp.size, hp.size, episodes=hp.episodes, seed=seed,
                                 gamma=hp.gamma, alpha=hp.lr, decay=hp.decay,
                                 min_eps=hp.minimum, on_episode=on_episode)
    return _result(steps, seconds, checks)


def frozenlake_loop(env: Any, q: np.ndarray, hp: Settings, rng: np.random.Generator,
                    on_episode=None) -> tuple[int, float]:
    """Plain online Q-learning on a gymnasium env with a numpy table (greedy ties broken at
    random). Returns (env steps, seconds without the time spent in ``on_episode``)."""
    n_actions = q.shape[1]
    steps, paused = 0, 0.0
    start = time.perf_counter()
    for episode in range(hp.episodes):
        eps = hp.epsilon(episode)
        s, _ = env.reset()
        done = False
        while not done:
            if rng.random() < eps:
                a = int(rng.integers(n_actions))
            else:
                qs = q[s]
                best = np.flatnonzero(qs == qs.max())
                a = int(best[rng.integers(best.size)]) if best.size > 1 else int(best[0])
            s2, r, terminated, truncated, _ = env.step(a)
            target = r if terminated else r + hp.gamma * q[s2].max()
            q[s, a] += hp.lr * (target - q[s, a])
            s = s2
            steps += 1
            done = terminated or truncated
        if on_episode is not None:
            t = time.perf_counter()
            on_episode(episode, q, t - start - paused)
            paused += time.perf_counter() - t
    return steps, time.perf_counter() - start - paused


def path_optimal(model: Any, sol: Any, policy: np.ndarray, start: int) -> bool:
    """Whether the greedy path from ``start`` in a deterministic model takes an optimal action
    in every state it visits and ends at a reward (a shortest path to the goal)."""
    s = start
    for _ in range(model.n_states + 1):
        a = int(policy[s])
        if not sol.optimal[s, a]:
            return False
        if model.terminal[s, a, 0]:
            return bool(model.reward[s, a, 0] > 0)
        s = int(model.next_state[s, a, 0])
    return False


def run_gym(hp: Settings, seed: int, eval_every: int = 1, budget_factor: int = 10) -> dict:
    """FrozenLake-v1 (not slippery, ``size`` x ``size``) through gymnasium. It always starts
    in one corner, so states off the way are only reached by exploration: its greedy policy
    counts as optimal when its path from the start is a shortest path to the goal (every
    state on it takes one of Q*'s optimal actions). It rarely finds the goal by chance, so it
    gets ``budget_factor`` times the grid's episode budget."""
    hp = replace(hp, episodes=hp.episodes * budget_factor)
    import gymnasium

    from qlab.core import oracle
    from qlab.core.envs.toytext import toy_text_model

    kwargs = {"is_slippery": False, "map_name": f"{hp.size}x{hp.size}"}
    model = toy_text_model("FrozenLake-v1", kwargs)
    sol = oracle.value_iteration(model, hp.gamma)
    env = gymnasium.make("FrozenLake-v1", **kwargs)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    q = np.zeros((env.observation_space.n, env.action_space.n))
    checks: list[tuple[int, float, bool]] = []

    start = int(np.argmax(model.initial))

    def on_episode(episode: int, q: np.ndarray, seconds: float) -> None:
        if _checked(eval_every, hp.episodes, episode):
            checks.append((episode, seconds, path_optimal(model, sol, q.argmax(1), start)))

    steps, seconds = frozenlake_loop(env, q, hp, np.random.default_rng(seed), on_episode)
    env.close()
    return _result(steps, seconds, checks)


def run_qlab(hp: Settings, seed: int, replicas: int, eval_every: int = 1,
             fast: bool = False) -> dict:
    """qlab's runner (``fast``: the compiled fast path) with the objects ``qlab.app.train.run``
    builds, tracking off; evaluation (qlab's exact evaluator) every ``eval_every`` episodes,
    its time not counted."""
    from qlab.app.build import build
    from qlab.config import validate

    c = validate(compose(_overrides(hp.size) + [
        "agent=tabular_q", f"replicas={replicas}", f"seed={seed}", f"episodes={hp.episodes}",
        f"eval_every={eval_every}", "tracking.enabled=false"]))
    job = build(c)
    ev = job.evaluator = TimedEvaluator(job.evaluator)
    ev.start()
    hist = driver.train(job, fast="on" if fast else "off",
                        flush_seconds=c.tracking.flush_seconds)
    seconds = time.perf_counter() - ev.t0 - ev.spent
    steps = float(np.nansum(hist.train["train/episode_length"]))
    times, episodes = [], []
    for k in range(c.replicas):
        n = int(hist.evals_done[k])
        j = stable_index(hist.evals["eval/optimal_fraction"][k, :n] == 1.0)
        times.append(None if j is None else ev.times[k][j])
        episodes.append(None if j is None else int(hist.eval_steps[k, j]))
    solved = [t for t in times if t is not None]
    return {"steps": steps, "seconds": seconds,
            "time_to_optimal": max(solved) if len(solved) == len(times) else None,
            "episodes_to_optimal": (max(e for e in episodes if e is not None)
                                    if len(solved) == len(times) else None),
            "solved": len(solved), "replicas": c.replicas}


def run_qlab_twice(hp: Settings, seed: int, replicas: int, eval_every: int, fast: bool,
                   default: int) -> dict:
    """Steps/s from a run evaluated as ``qlab-train`` evaluates by default (every ``default``
    episodes), time to optimal from a run evaluated every ``eval_every`` episodes (the same
    seed, so the same training: evaluation does not change it). The two differ only for the
    fast path, whose compiled loop hands back to Python at every evaluation."""
    timed = run_qlab(hp, seed, replicas, default, fast)
    dense = run_qlab(hp, seed, replicas, eval_every, fast)
    return {**dense, "steps": timed["steps"], "seconds": timed["seconds"], "eval_every": default,
            "dense_steps": dense["steps"], "dense_seconds": dense["seconds"]}


# ------------------------------------------------------------------------- section

def measure(sizes=(4, 8), repeats: int = 5, batch_repeats: int = 3, replicas: int = 64,
            episodes: int | None = None, eval_every: int = 1, warmup: bool = True,
            startup: bool = True, progress=None) -> list[Row]:
    """The tabular rows for each grid size: medians over ``repeats`` seeds (``batch_repeats``
    for R = ``replicas``), contenders interleaved within each repeat; with ``startup``, the
    fast path's start-up cost (fresh processes)."""
    from qlab.config import validate

    say = progress or (lambda msg: None)
    rows: list[Row] = []
    qlab = {f"qlab {path} R={r}": (r, path == "fast")
            for r in (1, replicas) for path in ("fast", "numpy")}
    batches = {who for who, (r, _) in qlab.items() if r == replicas}
    for size in sizes:
        hp = settings(size, episodes)
        contenders = {
            NOTEBOOK: lambda s, hp=hp: run_notebook(hp, s, eval_every),
            GYM: lambda s, hp=hp: run_gym(hp, s, eval_every, GYM_BUDGET),
        }
        default = int(validate(compose(_overrides(size))).eval_every)  # qlab-train's
        for who, (r, fast) in qlab.items():
            contenders[who] = (lambda s, hp=hp, r=r, fast=fast, default=default:
                               run_qlab_twice(hp, s * r, r, eval_every, fast, default))
        runs: dict[str, list[dict]] = {who: [] for who in contenders}
        if warmup:  # imports, caches, any compilation: not counted
            small = replace(hp, episodes=min(hp.episodes, 5))
            run_notebook(small, 10_000, eval_every)
            run_gym(small, 10_000, eval_every, 1)
            for r, fast in qlab.values():
                run_qlab(small, 10_000, r, eval_every, fast)
        for rep in range(repeats):
            for who, fn in contenders.items():
                if who in batches and rep >= batch_repeats:
                    continue
                say(f"tabular {size}x{size}: {who}, repeat {rep + 1}")
                runs[who].append(fn(rep))
        section = f"tabular {size}x{size}"
        sps_rows, tto_rows = [], []
        for who, rs in runs.items():
            sps = [r["steps"] / r["seconds"] for r in rs]
            eps_ = [r["episodes_to_optimal"] for r in rs]
            budget = hp.episodes * (GYM_BUDGET if who == GYM else 1)
            note = f"{len(rs)} runs x {budget} episodes"
            if who in qlab:
                note += f", evaluated every {rs[0]['eval_every']} (qlab's default)"
            sps_rows.append(Row(section, "env steps/s", who, median(sps), "steps/s", sps,
                                note=note))
            if who in qlab and who.startswith("qlab fast"):
                dense = [r["dense_steps"] / r["dense_seconds"] for r in rs]
                sps_rows.append(Row(section, "env steps/s", f"{who}, evaluated every episode",
                                    median(dense), "steps/s", dense,
                                    note="the runs timed to the optimal policy below; the "
                                         "kernel stops at every evaluation"))
            tto = [r["time_to_optimal"] for r in rs]
            solved = sum(t is not None for t in tto)
            note = f"optimal in {solved}/{len(rs)} runs"
            if solved:
                note += f", median episode {median(eps_):g}"
            if who in batches:
                note = (f"all {replicas} replicas optimal in {solved}/{len(rs)} runs"
                        + (f", last at episode {median(eps_):g} (median)" if solved else ""))
            tto_rows.append(Row(section, "time to optimal policy", who, median_time(tto), "s",
                                [t for t in tto if t is not None], note=note))
            if who in batches:
                per = [None if t is None else t / replicas for t in tto]
                tto_rows.append(Row(section, "time to optimal policy", f"{who} per replica",
                                    median_time(per), "s", [t for t in per if t is not None],
                                    note=f"the time until all {replicas} are optimal / "
                                         f"{replicas}"))
        add_ratios(sps_rows, NOTEBOOK, higher_is_better=True)
        add_ratios(tto_rows, NOTEBOOK, higher_is_better=False)
        for r in sps_rows:
            if r.who == f"qlab fast R={replicas}" and replicas == 64:
                check_target(r, ">=", 250)
            if r.who == "qlab fast R=1":
                check_target(r, ">=", 10)
        rows += sps_rows + tto_rows
    if startup:
        rows += measure_startup(say)
    return rows


# ------------------------------------------------------------------------- fast path start-up

def fast_startup(cache_dir: str) -> dict:
    """Worker: in this fresh process, with numba's kernel cache in ``cache_dir``, the seconds
    to import numba and to run a first (3-episode, R = 1) fast-path training — compiling the
    kernels or loading them from the cache, whichever ``cache_dir`` allows (the training
    itself takes well under a millisecond)."""
    import os

    os.environ["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    import numba  # noqa: F401

    t1 = time.perf_counter()
    from qlab.app.build import build
    from qlab.config import validate

    job = build(validate(compose(["agent=tabular_q", "episodes=3", "tracking.enabled=false"])))
    t2 = time.perf_counter()
    driver.train(job, fast="on")
    return {"import": t1 - t0, "first_call": time.perf_counter() - t2}


def measure_startup(say, cold_runs: int = 2, cached_runs: int = 3) -> list[Row]:
    """Rows of the fast path's start-up cost: a fresh process with an empty kernel cache
    (numba compiles; once per machine) and with a filled one (every later process)."""
    import tempfile

    from benchmarks.common import run_worker

    out: dict[str, list[dict]] = {"cold": [], "cached": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(cold_runs):
            say(f"tabular fast path start-up: empty cache, run {i + 1}")
            out["cold"].append(run_worker("benchmarks.tabular", {
                "kind": "fast_startup", "cache_dir": f"{tmp}/cold{i}"}))
        for i in range(cached_runs):
            say(f"tabular fast path start-up: cached, run {i + 1}")
            out["cached"].append(run_worker("benchmarks.tabular", {
                "kind": "fast_startup", "cache_dir": f"{tmp}/cold0"}))
    section = "tabular fast path start-up"
    rows = []
    for key, who in (("cold", "empty kernel cache (compile)"),
                     ("cached", "kernel cache filled")):
        first = [r["first_call"] for r in out[key]]
        imp = median([r["import"] for r in out[key]])
        rows.append(Row(section, "first training's extra time", who, median(first), "s", first,
                        note=f"{len(first)} fresh processes; plus {imp:.2f} s to import numba"))
    return rows


HANDLERS = {"fast_startup": fast_startup}

if __name__ == "__main__":
    from benchmarks.common import worker_main

    worker_main(HANDLERS)
