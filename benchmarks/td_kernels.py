"""SARSA, Expected SARSA and Double Q-learning: the numpy reference stepper against the
compiled (numba) one, on cliff walking (the book's settings) and the 8x8 grid (the tuned
settings), 20 replicas, timed in one process, interleaved, median of 3 after a warm-up that
compiles or loads the kernels. Training only (no tracking, evaluation only after the last
episode). Both steppers give bit-identical results (tests/test_fastpath.py).

    python -m benchmarks.td_kernels [AGENT ...]
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

from benchmarks.common import compose
from qlab.app.build import build
from qlab.config import validate
from qlab.core import driver

AGENTS = ("sarsa", "expected_sarsa", "double_q")
CASES = {
    "cliffwalking": ["env=cliffwalking", "exploration=constant", "exploration.start=0.1",
                     "agent.lr=0.5", "agent.gamma=1.0"],
    "griddy8": ["env=griddy8"],
}
REPLICAS, EPISODES, REPEATS = 20, 200, 3


def timed(overrides: list[str], fast: str) -> float:
    """Seconds to train the job ``overrides`` describe with stepper ``fast``."""
    job = build(validate(compose([*overrides, "tracking.enabled=false"])))
    job = dataclasses.replace(job, eval_every=job.episodes)
    t0 = time.perf_counter()
    driver.train(job, fast=fast)
    return time.perf_counter() - t0


def main(agents: list[str]) -> None:
    for env, base in CASES.items():
        for agent in agents:
            timed([*base, f"agent={agent}", "replicas=2", "episodes=5"], "on")  # warm-up
            job = [*base, f"agent={agent}", f"replicas={REPLICAS}", f"episodes={EPISODES}"]
            ref, fast = [], []
            for _ in range(REPEATS):
                ref.append(timed(job, "off"))
                fast.append(timed(job, "on"))
            r, f = statistics.median(ref), statistics.median(fast)
            print(f"{env:13s} {agent:15s} numpy {r:8.3f} s  compiled {f:7.3f} s  "
                  f"speedup {r / f:5.1f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(AGENTS))
