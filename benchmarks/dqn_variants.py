"""The per-env-step cost of DQN's variants (dueling head, n-step returns, both) against plain
DQN, on CartPole-v1 (rl-zoo's settings: 128 gradient steps every 256 env steps) and on the
4x4 grid (qlab's defaults: one gradient step per env step).

Each measurement is one qlab job of one replica in a fresh process (its own imports and
threads; a short untimed job first warms torch up), timed around
:func:`qlab.core.driver.train` without evaluation, in the process's CPU time (one torch
thread: on a shared machine it moves less with the load than wall time, which is given too);
the variants run interleaved, repeat after repeat, so a change in the machine's load hits them
alike. The table gives each variant's median CPU microseconds per env step and its ratio to
plain DQN's median.

    PYTHONPATH=src python -m benchmarks.dqn_variants [REPEATS] [CARTPOLE_STEPS] [GRID_STEPS]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from benchmarks.common import compose, median, run_worker, worker_main

VARIANTS = {"plain": [], "dueling": ["agent.dueling=true"], "n_step=3": ["agent.n_step=3"],
            "dueling + n_step=3": ["agent.dueling=true", "agent.n_step=3"]}
ENVS = {"CartPole-v1": ["env=cartpole"], "griddy 4x4": ["env=griddy", "agent.learning_starts=500"]}


def job(overrides: Sequence[str], steps: int):
    """A job of one replica, ``steps`` env steps, no evaluation."""
    import dataclasses

    from qlab.app.build import build
    from qlab.config import validate

    c = validate(compose(["agent=dqn", "tracking.enabled=false", "replicas=1", "seed=0",
                          f"total_steps={steps}", "episodes=100000", *overrides]))
    return dataclasses.replace(build(c), evaluator=None)


def run(overrides: Sequence[str], steps: int) -> dict:
    """CPU and wall seconds of training ``job(overrides, steps)``, after a warm-up job."""
    from qlab.core import driver

    driver.train(job([*overrides, "agent.learning_starts=64", "agent.train_freq=4"], 300))
    j = job(overrides, steps)
    cpu, wall = time.process_time(), time.perf_counter()
    hist = driver.train(j)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = float(sum(hist.train["train/episode_length"][0, :hist.done[0]]))
    return {"steps": done, "cpu": cpu, "wall": wall}


def main(repeats: int = 3, cartpole_steps: int = 10_000, grid_steps: int = 3_000) -> None:
    budgets = {"CartPole-v1": cartpole_steps, "griddy 4x4": grid_steps}
    cpu: dict[tuple[str, str], list[float]] = {}
    wall: dict[tuple[str, str], list[float]] = {}
    for _ in range(repeats):
        for env, env_over in ENVS.items():
            for name, over in VARIANTS.items():
                out = run_worker("benchmarks.dqn_variants",
                                 {"kind": "run", "overrides": [*env_over, *over],
                                  "steps": budgets[env]})
                cpu.setdefault((env, name), []).append(out["cpu"] / out["steps"])
                wall.setdefault((env, name), []).append(out["wall"] / out["steps"])
    print("| env | variant | median CPU us / env step | ratio to plain | runs (CPU us / step) "
          "| median wall us / step, ratio |")
    print("|---|---|---|---|---|---|")
    for env in ENVS:
        base, wall_base = median(cpu[(env, "plain")]), median(wall[(env, "plain")])
        for name in VARIANTS:
            xs, m, w = cpu[(env, name)], median(cpu[(env, name)]), median(wall[(env, name)])
            print(f"| {env} ({budgets[env]} steps) | {name} | {1e6 * m:.0f} | {m / base:.2f}x | "
                  + ", ".join(f"{1e6 * x:.0f}" for x in xs)
                  + f" | {1e6 * w:.0f}, {w / wall_base:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):
        worker_main({"run": run})
    else:
        main(*map(int, sys.argv[1:]))
