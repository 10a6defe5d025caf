"""``build(cfg) -> Job``: the one place a config becomes the objects a job trains — env,
agent, exploration schedule, evaluator and seeds — used by ``qlab-train``, the Python API,
the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from qlab.config import QlabConfig, validate
from qlab.core import agents, envs, exploration
from qlab.core.driver import Job
from qlab.core.envs.gym_vector import make_gym
from qlab.core.evaluation import Evaluator, RolloutEvaluator


def build(cfg: QlabConfig | DictConfig, seeds: Sequence[int] | None = None) -> Job:
    """The job ``cfg`` describes (a composed config is validated first): R = ``replicas``
    replicas seeded ``seed`` .. ``seed + R - 1``, or the given ``seeds`` (a fused job's)."""
    c = validate(cfg) if isinstance(cfg, DictConfig) else cfg
    seeds = [c.seed + k for k in range(c.replicas)] if seeds is None else [int(s) for s in seeds]
    env = envs.make(c.env, seeds)
    agent = agents.make(c.agent, env, seeds)
    schedule = exploration.make(c.exploration, len(seeds))
    if env.model is not None:  # exact evaluation against Q*
        evaluator = Evaluator(env.model, agent.gamma)
    else:  # no model (CartPole): greedy rollouts on separate eval env copies
        e = c.env
        evaluator = RolloutEvaluator(lambda: make_gym(e.id, e.max_steps, e.kwargs), seeds,
                                     c.eval_episodes)
    return Job(env, agent, schedule, c.episodes, c.eval_every, evaluator, c.total_steps,
               seeds, agents.spec_of(c.agent).compiled)
