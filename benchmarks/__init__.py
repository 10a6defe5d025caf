"""qlab's benchmark suite (``qlab-bench``, ``make bench``): qlab against the baselines it
replaces, side by side in one run on one machine, every figure a ratio against a baseline
measured in the same run (medians of repeats).

Sections, each a module with one measuring function returning :class:`~benchmarks.common.Row`s:

- :mod:`benchmarks.tabular` — the source notebook's loop (:mod:`benchmarks.notebook_baseline`),
  a plain gymnasium FrozenLake loop, qlab with R = 1 and R = 64: env steps per second and
  wall time until the greedy policy is optimal, on 4x4 and 8x8 grids;
- :mod:`benchmarks.dqn` — qlab's DQN against Stable-Baselines3's on CartPole-v1 with the
  same hyperparameters, and 8 replicas in one job against 8 runs one after another;
- :mod:`benchmarks.tracking` — a 1000-episode tabular run with MLflow on against off;
- :mod:`benchmarks.sweeps` — the headline sweep end to end, basic and joblib launchers.
"""
