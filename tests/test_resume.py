"""Checkpoints and resume: a job stopped at a checkpoint and resumed ends exactly where an
uninterrupted job ends (tabular bit-exact, DQN on CPU with one thread too); kill -9 and
SIGTERM mid-run, then resume, through ``qlab-train`` itself; and every bad checkpoint or
resume target is one line, a non-zero exit and an untouched store.

``train/sps`` (wall-clock steps per second) is the one metric that differs between runs and
is left out of every comparison.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab.train
from qlab import agents, checkpoint, envs, exploration, resume, runner
from qlab.config import validate

WALL_CLOCK = ("train/sps",)
QLAB_TRAIN = str(Path(sys.executable).parent / "qlab-train")


# ------------------------------------------------------------------ in-process round trips

def build(cfg):
    """env, agent, schedule, evaluator as ``qlab.train.run`` builds them."""
    c = validate(cfg)
    seeds = [c.seed + k for k in range(c.replicas)]
    env = envs.make(c.env, seeds)
    agent = agents.make(c.agent, env, seeds)
    schedule = exploration.make(c.exploration, c.replicas)
    if env.model is not None:
        evaluator = runner.Evaluator(env.model, agent.gamma)
    else:
        evaluator = runner.RolloutEvaluator(
            lambda: envs.gym_vector.make_gym(c.env.id, c.env.max_steps, c.env.kwargs), seeds,
            c.eval_episodes)
    return c, env, agent, schedule, evaluator


class Crash(Exception):
    """Stands in for a process dying right after a checkpoint."""


def flat_state(obj) -> dict:
    arrays: dict = {}
    meta: dict = {}
    checkpoint._split(obj.state_dict(), "", arrays, meta)
    return {**arrays, "__meta__": json.dumps(meta, sort_keys=True)}


def assert_same_history(a: runner.History, b: runner.History) -> None:
    assert a.train.keys() == b.train.keys() and a.evals.keys() == b.evals.keys()
    for k in a.train:
        if k not in WALL_CLOCK:
            np.testing.assert_array_equal(a.train[k], b.train[k], err_msg=k)
    for k in a.evals:
        np.testing.assert_array_equal(a.evals[k], b.evals[k], err_msg=k)
    np.testing.assert_array_equal(a.eval_steps, b.eval_steps)
    np.testing.assert_array_equal(a.done, b.done)


ROUND_TRIPS = {
    "tabular_q-griddy8": ["env=griddy8", "episodes=120"],
    "tabular_q-episode-frozenlake": ["env=frozenlake", "agent.update=episode", "episodes=150",
                                     "~hparams"],
    "tabular_mc-griddy": ["agent=tabular_mc", "env=griddy", "episodes=120"],
    "dqn-griddy": ["agent=dqn", "env=griddy", "episodes=25", "~hparams", "agent.hidden=[16]",
                   "agent.learning_starts=50", "agent.buffer_size=300", "agent.target_update=20",
                   "exploration.decay=0.9"],
    "dqn-cartpole": ["agent=dqn", "env=cartpole", "episodes=12", "eval_every=4",
                     "eval_episodes=2", "agent.hidden=[16]", "agent.learning_starts=50",
                     "agent.buffer_size=400", "total_steps=null", "exploration.unit=episode",
                     "exploration.duration=10"],
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_stop_at_checkpoint_then_resume_equals_uninterrupted(name, compose_cfg, tmp_path) -> None:
    """Every agent and env: state_dict -> file -> fresh objects -> continue gives the same
    history, Q / weights, optimiser, buffers and RNG states as never stopping."""
    cfg = compose_cfg([*ROUND_TRIPS[name], "replicas=2", "tracking.enabled=false"])
    c, env, agent, schedule, evaluator = build(cfg)
    ref = runner.train(env, agent, schedule, c.episodes, c.eval_every, evaluator,
                       total_steps=c.total_steps)

    c, env2, agent2, schedule, evaluator2 = build(cfg)
    path = tmp_path / "ckpt.npz"
    writer = checkpoint.Checkpointer(path, {"job_id": "j"}, env2, agent2, evaluator2)

    def crash_on_second(loop, hist) -> None:
        writer(loop, hist)
        if writer.written == 2:
            raise Crash

    every = max(1, c.episodes // 6)
    with pytest.raises(Crash):
        runner.train(env2, agent2, schedule, c.episodes, c.eval_every, evaluator2,
                     total_steps=c.total_steps, checkpoint=crash_on_second,
                     checkpoint_every=every)

    header, state = checkpoint.read(path)
    assert header["job_id"] == "j" and min(header["episodes_done"]) == 2 * every
    c, env3, agent3, schedule, evaluator3 = build(cfg)
    hist = runner.History.empty(2, c.episodes, c.eval_every, evaluator3.keys, agent3.stat_keys
                                if hasattr(agent3, "stat_keys") else ())
    loop = runner.loop_state(2, getattr(agent3, "stat_keys", ()))
    checkpoint.restore(path, state, env3, agent3, evaluator3, hist, loop)
    out = runner.train(env3, agent3, schedule, c.episodes, c.eval_every, evaluator3,
                       total_steps=c.total_steps, resume=(hist, loop))
    assert_same_history(ref, out)
    assert flat_state(agent3).keys() == flat_state(agent).keys()
    for k, v in flat_state(agent).items():
        np.testing.assert_array_equal(flat_state(agent3)[k], v, err_msg=k)
    for k, v in flat_state(env).items():
        np.testing.assert_array_equal(flat_state(env3)[k], v, err_msg=k)
