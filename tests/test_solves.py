"""Ground truth: the tuned hyperparameters in conf/hparams do what docs/research_notes.md says
(its table, and "Monte-Carlo control: the known gaps"), checked
exactly on each env's model — 5 seeds (0..4) trained as one batch of 5 replicas, with the
stepper ``qlab-train`` uses (``fast=auto``: the compiled stepper for the tabular agents, which
matches the numpy reference bit for bit).

- "optimal": the final greedy policy takes an optimal action (Q* by value iteration, ties
  allowed) in every state where the agent acts (eval/optimal_fraction == 1), every replica.
- "near": the final greedy policy's exact value from the start distribution (policy
  evaluation on the model, horizon = the env's max_steps, the configured gamma) is within
  0.02 of V*, the finite-horizon optimum (value iteration with the same horizon).

The Monte-Carlo case no setting reaches (CliffWalking, optimal) is kept as a slow, expected
failure: it documents the gap and flags it if it ever closes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from qlab.app.build import build
from qlab.config import CONF_DIR, options, validate
from qlab.core import driver, envs
from qlab.core.agents.qlearning import TabularQConfig
from qlab.core.evaluation import Evaluator
from qlab.core.oracle import policy_value, value_iteration

SEEDS = 5
TOLERANCE = 0.02


def train(compose_cfg, agent: str, env: str):
    """Train agent on env with the composed config (its hparams included), seeds 0..4, with
    the stepper qlab-train picks (``fast: auto``). No evaluations during training: the checks
    score the final Q tables."""
    cfg = compose_cfg([f"agent={agent}", f"env={env}", f"replicas={SEEDS}", "seed=0",
                       "tracking.enabled=false"])
    c = validate(cfg)
    job = dataclasses.replace(build(c), evaluator=None, eval_every=c.episodes)
    driver.train(job, fast=c.fast)
    return c, job.env.model, job.agent


def optimal_fractions(model, learner) -> np.ndarray:
    """(R,) eval/optimal_fraction of each replica's final Q (the runner's Evaluator)."""
    evaluate = Evaluator(model, learner.gamma)
    return np.array([evaluate(k, q)["eval/optimal_fraction"]
                     for k, q in enumerate(learner.q_values())])


def value_gaps(model, learner, gamma: float) -> np.ndarray:
    """(R,) V*(start) - V^greedy(start), both exact within the model's horizon."""
    v_star = model.initial @ value_iteration(model, gamma, horizon=model.max_steps).v
    return np.array([v_star - model.initial @ policy_value(model, pi, gamma)
                     for pi in learner.greedy_policy()])


def check(compose_cfg, agent: str, env: str, goal: str) -> None:
    c, model, learner = train(compose_cfg, agent, env)
    assert Path(CONF_DIR, "hparams", f"{agent}_{env}.yaml").exists()
    if goal == "optimal":
        final = optimal_fractions(model, learner)
        assert np.all(final == 1.0), f"optimal fraction per seed: {final}"
    else:
        gaps = value_gaps(model, learner, c.agent.gamma)
        assert np.all(gaps <= TOLERANCE), f"V* - V(greedy) per seed: {gaps}"


@pytest.mark.training
@pytest.mark.parametrize("agent, env, goal", [
    ("tabular_q", "griddy", "optimal"),
    ("tabular_q", "griddy8", "optimal"),
    ("tabular_q", "cliffwalking", "optimal"),
    ("tabular_q", "frozenlake", "near"),
    ("tabular_mc", "griddy", "optimal"),
    ("tabular_mc", "griddy8", "optimal"),
    ("tabular_mc", "frozenlake", "near"),
])
def test_tuned_agent_solves_env(compose_cfg, agent: str, env: str, goal: str) -> None:
    check(compose_cfg, agent, env, goal)


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="Monte-Carlo control's known gap; see "
                   "docs/research_notes.md, \"Monte-Carlo control: the known gaps\"")
@pytest.mark.parametrize("agent, env, goal", [
    ("tabular_mc", "cliffwalking", "optimal"),
])
def test_monte_carlo_known_gaps(compose_cfg, agent: str, env: str, goal: str) -> None:
    check(compose_cfg, agent, env, goal)


@pytest.mark.parametrize("env, gamma, eps, wrong", [
    ("cliffwalking", 1.0, 0.007, 0), ("cliffwalking", 1.0, 0.008, 1),
    ("cliffwalking", 1.0, 0.01, 3), ("cliffwalking", 1.0, 0.1, 10),
    ("griddy8", 0.9, 0.3, 0), ("griddy8", 0.9, 0.01, 0),
])
def test_greedy_of_epsilon_soft_optimum(compose_cfg, env: str, gamma: float, eps: float,
                                        wrong: int) -> None:
    """What on-policy Monte-Carlo converges to, solved exactly: the number of acting states
    where the greedy action of Q^{pi_eps} (the best epsilon-soft policy) is not optimal — the
    reason (docs/research_notes.md) CliffWalking stays a gap (the cliff edge needs eps <= 0.007) and
    griddy8 does not."""
    from benchmarks.mc_search import eps_soft_q

    model = envs.make_model(validate(compose_cfg([f"env={env}"])).env)
    sol = value_iteration(model, gamma)
    pi = eps_soft_q(model, gamma, eps, horizon=model.max_steps).argmax(1)
    assert int((~sol.is_optimal(pi) & model.acting_states).sum()) == wrong


def test_frozenlake_v_star_is_the_finite_horizon_optimum(compose_cfg) -> None:
    """The reference the "near" check compares to: with gamma = 1 the 100-step optimum is the
    best probability of reaching the goal within the time limit (~0.744, not the
    infinite-horizon 0.824)."""
    c = validate(compose_cfg(["env=frozenlake"]))
    model = envs.make_model(c.env)
    v100 = model.initial @ value_iteration(model, 1.0, horizon=100).v
    assert v100 == pytest.approx(0.7442, abs=1e-4)


# ------------------------------------------------------------ the hparams group itself

def hparams_files() -> list[tuple[str, str, Path]]:
    """(agent, env, file) for every conf/hparams/AGENT_ENV.yaml."""
    out = []
    for path in sorted(Path(CONF_DIR, "hparams").glob("*.yaml")):
        agent = next((a for a in sorted(options("agent"), key=len, reverse=True)
                      if path.stem.startswith(a + "_")), None)
        assert agent is not None, f"{path.name}: not named AGENT_ENV"
        env = path.stem[len(agent) + 1:]
        assert Path(CONF_DIR, "env", f"{env}.yaml").exists(), f"{path.name}: no env {env}"
        out.append((agent, env, path))
    return out


def leaves(node, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.parametrize("agent, env, path", hparams_files(), ids=lambda x: getattr(x, "stem", x))
def test_hparams_are_picked_by_agent_and_env(compose_cfg, agent: str, env: str,
                                             path: Path) -> None:
    """The defaults list selects AGENT_ENV.yaml from the group choices alone."""
    cfg = compose_cfg([f"agent={agent}", f"env={env}"])
    want = leaves(OmegaConf.to_container(OmegaConf.load(path)))
    assert want, f"{path.name} sets nothing"
    for key, value in want.items():
        assert OmegaConf.select(cfg, key) == value, key
    validate(cfg)


def test_command_line_beats_hparams(compose_cfg) -> None:
    cfg = compose_cfg(["agent=tabular_q", "env=griddy", "agent.lr=0.123", "episodes=7"])
    assert cfg.agent.lr == 0.123 and cfg.episodes == 7
    assert cfg.exploration.decay == OmegaConf.load(
        Path(CONF_DIR, "hparams", "tabular_q_griddy.yaml")).exploration.decay


def test_pairs_without_hparams_keep_the_defaults(compose_cfg, tmp_path) -> None:
    """A user's own env (its YAML in a config dir of theirs) has no hparams file whatever
    files conf/ holds: the schema's defaults apply."""
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "my_grid.yaml").write_text(
        "defaults:\n  - base_env\n  - _self_\nname: my_grid\nid: qlab/Griddy-v0\n"
        "height: 3\nwidth: 5\n")
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path}]", "agent=tabular_q",
                       "env=my_grid"])
    assert cfg.env.name == "my_grid"
    assert cfg.agent.lr == TabularQConfig().lr  # the schema's default: defaults live there
