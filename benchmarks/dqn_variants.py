"""The per-env-step cost of DQN's variants (dueling head, n-step returns, both) against plain
DQN, in one process, for the two shipped settings: CartPole-v1 (rl-zoo's: a 256-256 net, 128
gradient steps every 256 env steps) and the 4x4 grid (qlab's defaults: a 64-64 net, one
gradient step per env step).

An env step of a DQN costs its acting and storing (``act`` + ``learn`` without training:
the n-step window's bookkeeping is here) plus its share of gradient steps
(``gradient_steps / train_freq`` of them; the dueling head and the n-step discounts are
there). Both are timed separately on an agent built from the composed config (one replica,
one torch thread; bursts of 128 gradient steps), in the process's CPU time (on a
shared machine it moves less with the load than wall time), the variants interleaved, repeat
after repeat; the table gives each part's median, their sum per env step and its ratio to
plain DQN's.

    PYTHONPATH=src python -m benchmarks.dqn_variants [REPEATS]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks.common import compose, median

VARIANTS = {"plain": [], "dueling": ["agent.dueling=true"], "n_step=3": ["agent.n_step=3"],
            "dueling + n_step=3": ["agent.dueling=true", "agent.n_step=3"]}
SETTINGS = {"CartPole-v1": ["env=cartpole"], "griddy 4x4": ["env=griddy"]}
ACT_STEPS, EPISODE = 2000, 20  # env steps timed for acting + storing; episode length fed


def make_agent(overrides: list[str]):
    from qlab.config import validate
    from qlab.core import agents, envs

    c = validate(compose(["agent=dqn", "tracking.enabled=false", "replicas=1",
                          "agent.learning_starts=100000000", *overrides]))
    return agents.make(c.agent, envs.make(c.env, [0]), [0]), c


def act_and_store(agent, rng: np.random.Generator, steps: int) -> float:
    """CPU seconds per env step of acting and storing (no training): random observations
    (or states), an episode end every ``EPISODE`` steps."""
    from qlab.core.agents.tabular import Transition

    if agent.observations is not None:  # a state table: states are its row indices
        obs = rng.integers(0, len(agent.observations), (steps + 1, 1))
    else:
        obs = rng.standard_normal((steps + 1, 1, agent.obs_dim)).astype(np.float32)
    reward = rng.standard_normal((steps, 1))
    active, eps = np.ones(1, dtype=bool), np.full(1, 0.1)
    t = time.process_time()
    for i in range(steps):
        a = agent.act(obs[i], eps)
        end = np.array([i % EPISODE == EPISODE - 1])
        agent.learn(Transition(obs[i], a, reward[i], obs[i + 1], end, end, active))
    return (time.process_time() - t) / steps


def gradient_step(agent) -> float:
    """CPU seconds per gradient step: one burst of ``gradient_steps`` on the filled buffer."""
    every = np.ones(1, dtype=bool)
    t = time.process_time()
    agent._train(every)
    return (time.process_time() - t) / agent.gradient_steps


def main(repeats: int = 5) -> None:
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    agents = {}
    for setting, s_over in SETTINGS.items():
        for name, over in VARIANTS.items():
            agent, c = make_agent([*s_over, *over])
            act_and_store(agent, rng, 3000)  # fills the buffer (and warms up)
            agent.gradient_steps = 128  # a burst long enough to time (CartPole: its own)
            gradient_step(agent)  # warm-up: the optimiser's construction
            agents[setting, name] = agent, c.agent.gradient_steps / c.agent.train_freq
    acting: dict = {}
    grads: dict = {}
    for _ in range(repeats):
        for key, (agent, _) in agents.items():
            acting.setdefault(key, []).append(act_and_store(agent, rng, ACT_STEPS))
            grads.setdefault(key, []).append(gradient_step(agent))
    print("| setting | variant | act + store, us / env step | gradient step, us | "
          "us / env step | ratio to plain |")
    print("|---|---|---|---|---|---|")
    for setting in SETTINGS:
        per = {}
        for name in VARIANTS:
            a, g = median(acting[setting, name]), median(grads[setting, name])
            per[name] = (a, g, a + g * agents[setting, name][1])
        for name, (a, g, total) in per.items():
            print(f"| {setting} | {name} | {1e6 * a:.0f} | {1e6 * g:.0f} | {1e6 * total:.0f} | "
                  f"{total / per['plain'][2]:.2f}x |")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
