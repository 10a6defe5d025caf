"""Checkpoints are validated whole before anything uses them: each array of a real checkpoint
is mutated in turn (another shape, another dtype, a value out of its range) and restoring it
into a fresh job must be refused with one line (:class:`~qlab.app.checkpoint.CheckpointError`)
-- nothing crafted reaches the compiled kernels (``loop::ep = [7800, 10**15]`` used to end in
SIGSEGV)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qlab.app import checkpoint
from qlab.app.build import build
from qlab.config import validate
from qlab.core.history import History, loop_state
from tests.helpers import crash_after_second_checkpoint

CONFIGS = {  # together they hold every kind of array a checkpoint carries
    "tabular_q-episode": ["agent.update=episode", "env=griddy", "episodes=40", "~hparams"],
    "sarsa": ["agent=sarsa", "env=griddy", "episodes=40"],
    "dqn": ["agent=dqn", "env=griddy", "episodes=12", "~hparams", "agent.hidden=[8]",
            "agent.learning_starts=20", "agent.buffer_size=100", "exploration.decay=0.9"],
}
# Integer arrays that have no upper bound the job fixes (step counts); all must be >= 0.
UNBOUNDED = {"loop::steps", "agent::steps", "agent::adam::step"}
# Float arrays that hold probabilities drawn from [0, 1).
UNIFORMS = ("::buf", "env::restart_u")
# Float arrays counting something: not negative.
FLOAT_COUNTERS = {"loop::qd_cnt", "loop::stat_cnt"}


def real_checkpoint(c, path: Path) -> dict[str, np.ndarray]:
    """Train ``c`` until its second checkpoint; the file's arrays by member name."""
    crash_after_second_checkpoint(build(c), path, max(1, c.episodes // 4))
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def restore(c, job, path: Path) -> tuple[History, dict]:
    """Read ``path`` and restore it into ``job`` (fresh History and loop counters)."""
    _, state = checkpoint.read(path)
    stat_keys = tuple(getattr(job.agent, "stat_keys", ()))
    hist = History.empty(job.replicas, c.episodes, c.eval_every, job.evaluator.keys, stat_keys)
    loop = loop_state(job.replicas, stat_keys)
    checkpoint.restore(path, state, job.env, job.agent, job.evaluator, hist, loop)
    return hist, loop


def mutations(name: str, arr: np.ndarray, c) -> list[tuple[str, np.ndarray]]:
    """The crafted versions of member ``name`` that must be refused."""
    out = [("extra axis", arr[None]), ("replica missing", arr[:-1])]
    if arr.size:
        if arr.dtype.kind == "f":
            out.append(("as int", np.nan_to_num(arr).astype(np.int64)))
        else:
            out.append(("as float", arr.astype(np.float64)))
    if arr.dtype.kind == "i" and arr.size:
        for value in (-1, *(() if name in UNBOUNDED else (10**15,))):
            bad = arr.copy()
            bad.flat[-1] = value
            out.append((f"a value {value}", bad))
    if arr.dtype.kind == "f" and arr.size and (name.endswith(UNIFORMS) or name in FLOAT_COUNTERS):
        for value in (-0.5, np.nan, *((1.0,) if name.endswith(UNIFORMS) else ())):
            bad = arr.copy()
            bad.flat[0] = value
            out.append((f"a value {value}", bad))
    return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "dqn" else n
                                  for n in CONFIGS])
def test_every_mutated_array_is_refused_in_one_line(name, compose_cfg, tmp_path) -> None:
    c = validate(compose_cfg([*CONFIGS[name], "replicas=2", "tracking.enabled=false"]))
    path = tmp_path / "checkpoint.npz"
    members = real_checkpoint(c, path)
    job = build(c)
    restore(c, job, path)  # the real checkpoint fits
    tried = 0
    for member, arr in members.items():
        if member == checkpoint.META:
            continue
        for what, bad in mutations(member, arr, c):
            np.savez(path, **{**members, member: bad})
            with pytest.raises(checkpoint.CheckpointError) as err:
                restore(c, build(c) if member.startswith("agent") else job, path)
            line = str(err.value)
            assert "\n" not in line and "does not fit this job" in line, (member, what, line)
            tried += 1
    assert tried > 40


def test_a_crafted_episode_counter_never_reaches_the_kernels(compose_cfg, tmp_path) -> None:
    """The issue's case: a valid file whose only change is ``loop::ep = [7800, 10**15]``."""
    c = validate(compose_cfg(["env=griddy", "episodes=40", "replicas=2",
                              "tracking.enabled=false"]))
    path = tmp_path / "checkpoint.npz"
    members = real_checkpoint(c, path)
    np.savez(path, **{**members, "loop::ep": np.array([7800, 10**15])})
    with pytest.raises(checkpoint.CheckpointError, match=r"loop\.ep\[0\] = 7800 is out of "
                                                          r"range \[0, 40\]"):
        restore(c, build(c), path)
