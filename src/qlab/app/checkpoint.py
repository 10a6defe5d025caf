"""Checkpoints: the complete training state of a job in one file, written atomically.

A checkpoint is one ``.npz`` (a zip of ``.npy`` arrays) read with ``np.load(...,
allow_pickle=False)``: nothing in it can execute code on load. Every stateful object
(agent, env, evaluator) gives a ``state_dict()`` — nested dicts whose leaves are numpy
arrays or JSON values (counters, bit-generator states, whose big ints JSON keeps exactly) —
and takes it back with ``load_state_dict``. Arrays are stored under their path of keys
joined by ``::``; the JSON leaves go, with a header, into the member ``__meta__`` (UTF-8
bytes as a uint8 array). Torch tensors are stored as numpy arrays (float32 exactly).

The header holds the format name and version, the job id and its MLflow run ids, the
resolved config without the keys that may change on resume (:data:`EXCLUDED`) and its
hash, so a checkpoint of another job or config is refused with one line.

Writing goes to a temp file in the same directory, fsync, then ``os.replace`` (atomic on
POSIX): a crash mid-write leaves the previous checkpoint whole. Only the latest is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qlab.config import flatten
from qlab.core.errors import QlabError
from qlab.core.statedict import check_same, load_array

FORMAT = "qlab-checkpoint"
VERSION = 1
FILE_NAME = "checkpoint.npz"
SEP = "::"  # joins nested keys of array members (metric keys contain '/')
META = "__meta__"
# Top-level config keys that may differ between a run and its resume.
EXCLUDED = ("resume", "checkpoint_every", "checkpoint_dir", "tracking",
            "fast")  # both paths train alike and continue each other's checkpoints


class CheckpointError(QlabError, ValueError):
    """A checkpoint that cannot be used: the message is one line naming the file and why."""

    exit_code = 2


# ---------------------------------------------------------------------------- config identity

def identity(resolved: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config without the keys a resume may change (:data:`EXCLUDED`)."""
    return {k: v for k, v in resolved.items() if k not in EXCLUDED}


def config_hash(resolved: Mapping[str, Any]) -> str:
    """A short stable hash of :func:`identity` (what makes two jobs the same job)."""
    text = json.dumps(identity(resolved), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (excluded keys aside),
    as ``key=old->new``."""
    da, db = flatten(identity(a)), flatten(identity(b))
    return [f"{k}={da.get(k, '<unset>')}->{db.get(k, '<unset>')}"
            for k in sorted(set(da) | set(db)) if da.get(k, "<unset>") != db.get(k, "<unset>")]


# ---------------------------------------------------------------------------- state <-> file

def _split(state: Mapping[str, Any], prefix: str, arrays: dict, meta: dict) -> None:
    for k, v in state.items():
        k = str(k)
        if SEP in k:
            raise ValueError(f"checkpoint key {k!r} contains {SEP!r}")
        if isinstance(v, Mapping):
            sub: dict = {}
            meta[k] = sub
            _split(v, f"{prefix}{k}{SEP}", arrays, sub)
        elif isinstance(v, np.ndarray):
            if v.dtype == object:
                raise ValueError(f"checkpoint array {prefix}{k} has dtype object")
            arrays[f"{prefix}{k}"] = v
        else:
            meta[k] = v.item() if isinstance(v, np.generic) else v


def _join(meta: dict, arrays: Mapping[str, np.ndarray]) -> dict:
    out: dict = {}
    for k, v in meta.items():
        out[k] = _join(v, {}) if isinstance(v, dict) else v
    for name, arr in arrays.items():
        *path, leaf = name.split(SEP)
        node = out
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = arr
    return out


def write(path: Path, state: Mapping[str, Any], header: Mapping[str, Any]) -> None:
    """Write ``state`` with ``header`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    tree: dict = {}
    _split(state, "", arrays, tree)
    meta = {**header, "format": FORMAT, "version": VERSION, "state": tree}
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{META: blob})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


def read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, state) of the checkpoint at ``path``; :class:`CheckpointError` in one line
    for a missing, truncated, corrupt or foreign file. Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise CheckpointError(f"checkpoint {path}: not a qlab checkpoint (a bare .npy "
                                      "array, not an .npz archive)")
            if META not in npz.files:
                raise CheckpointError(f"checkpoint {path}: not a qlab checkpoint (no {META})")
            meta = json.loads(npz[META].tobytes().decode())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                fmt = meta.get("format") if isinstance(meta, dict) else None
                raise CheckpointError(f"checkpoint {path}: not a qlab checkpoint (format {fmt!r})")
            if meta.get("version") != VERSION:
                raise CheckpointError(f"checkpoint {path}: format version {meta.get('version')!r}; "
                                      f"this qlab reads version {VERSION}")
            arrays = {name: npz[name] for name in npz.files if name != META}
    except CheckpointError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile,
            UnicodeDecodeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint {path}: corrupt or truncated "
                              f"({type(exc).__name__}: {why})") from None
    state = _join(meta.pop("state", {}), arrays)
    return meta, state


# ---------------------------------------------------------------------------- runner state

def history_state(hist) -> dict[str, Any]:
    """A :class:`~qlab.core.history.History` as a state dict; the per-episode tables only up to
    the furthest replica's episode (the rest is NaN), so early checkpoints stay small."""
    n = int(hist.done.max(initial=0))
    return {"train": {k: v[:, :n].copy() for k, v in hist.train.items()},
            "evals": {k: v.copy() for k, v in hist.evals.items()},
            "eval_steps": hist.eval_steps.copy(), "done": hist.done.copy(),
            "evals_done": hist.evals_done.copy(),
            "failed": {str(k): v for k, v in hist.failed.items()}}


def load_history(hist, d: Mapping[str, Any]) -> None:
    """Fill a fresh :class:`~qlab.core.history.History` of the same job from
    :func:`history_state`."""
    for group in ("train", "evals"):
        tables = getattr(hist, group)
        if set(d[group]) != set(tables):
            raise ValueError(f"history.{group} holds {sorted(d[group])}, expected {sorted(tables)}")
        for k in tables:
            if group == "train":  # saved up to the furthest replica's episode
                n = np.shape(d[group][k])[-1] if np.ndim(d[group][k]) == 2 else -1
                if not 0 <= n <= tables[k].shape[1]:
                    raise ValueError(f"history.train.{k} has shape {np.shape(d[group][k])}")
                tables[k][:, :n] = load_array(f"history.train.{k}", d[group][k],
                                              tables[k][:, :n])
            else:
                tables[k] = load_array(f"history.{group}.{k}", d[group][k], tables[k])
    n_evals = hist.eval_steps.shape[1]
    for k, hi in (("eval_steps", hist.episodes - 1), ("done", hist.episodes),
                  ("evals_done", n_evals)):
        setattr(hist, k, load_array(f"history.{k}", d[k], getattr(hist, k), 0, hi))
    if int(hist.done.max(initial=0)) > n_saved(d):
        raise ValueError("history.done runs past the saved episodes")
    if not isinstance(d["failed"], Mapping):
        raise ValueError("history.failed is not a mapping of replica -> reason")
    failed = {int(k): str(v) for k, v in d["failed"].items()}
    if any(not 0 <= k < hist.replicas for k in failed):
        raise ValueError(f"history.failed names replicas {sorted(failed)}, expected "
                         f"0..{hist.replicas - 1}")
    hist.failed = failed


def n_saved(d: Mapping[str, Any]) -> int:
    """Episodes saved per replica in a :func:`history_state` (0 without train tables)."""
    return min((np.shape(v)[-1] for v in d["train"].values()), default=0)


def load_into(arrays: Mapping[str, np.ndarray], d: Mapping[str, Any], name: str,
              ranges: Mapping[str, tuple[float | None, float | None]] | None = None) -> None:
    """Overwrite each array of ``arrays`` in place with ``d``'s value of the same key (in
    ``ranges[key]`` = (lo, hi) where given)."""
    if not isinstance(d, Mapping) or set(d) != set(arrays):
        got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
        raise ValueError(f"{name} holds {got}, expected {sorted(arrays)}")
    for k, arr in arrays.items():
        arr[...] = load_array(f"{name}.{k}", d[k], arr, *(ranges or {}).get(k, (None, None)))


def load_loop(loop: dict[str, np.ndarray], d: Mapping[str, Any], hist) -> None:
    """The driver's loop counters from a checkpoint, checked against its History: episode
    counters within the job and equal to the History's, step and update counters not
    negative, finished replicas inactive (what keeps a crafted counter out of the kernels,
    which index the History's tables by it)."""
    counters = {k: (0, None) for k in loop if k in ("steps", "length", "qd_cnt", "stat_cnt")}
    load_into(loop, d, "loop", {**counters, "ep": (0, hist.episodes)})
    check_same("loop.ep", loop["ep"], "history.done", hist.done)
    over = loop["active"] & (loop["ep"] >= hist.episodes)
    if over.any():
        raise ValueError(f"loop.active marks replica {int(np.flatnonzero(over)[0])} active "
                         f"after its last episode ({hist.episodes})")
    longer = loop["length"] > loop["steps"]
    if longer.any():
        raise ValueError(f"loop.length of replica {int(np.flatnonzero(longer)[0])} exceeds "
                         "its loop.steps")


class Checkpointer:
    """Writes the job's checkpoint when the driver asks: the driver's loop state and history
    plus the env's, agent's and evaluator's state dicts, under ``header``."""

    def __init__(self, path: Path, header: Mapping[str, Any], env, agent, evaluator=None) -> None:
        self.path, self.header = Path(path), dict(header)
        self.env, self.agent, self.evaluator = env, agent, evaluator
        self.written = 0

    def __call__(self, loop: Mapping[str, Any], hist) -> None:
        state = {"loop": dict(loop), "history": history_state(hist),
                 "env": self.env.state_dict(), "agent": self.agent.state_dict()}
        if self.evaluator is not None and hasattr(self.evaluator, "state_dict"):
            state["evaluator"] = self.evaluator.state_dict()
        write(self.path, state, {**self.header, "episodes_done": hist.done.tolist()})
        self.written += 1


def restore(path: Path, state: Mapping[str, Any], env, agent, evaluator, hist,
            loop: dict[str, np.ndarray]) -> None:
    """Load a checkpoint's state into freshly built ``env``, ``agent``, ``evaluator``, an
    empty History ``hist`` and the driver's ``loop`` arrays. Any mismatch is one line."""
    try:
        env.load_state_dict(state["env"])
        agent.load_state_dict(state["agent"])
        if evaluator is not None and hasattr(evaluator, "load_state_dict"):
            evaluator.load_state_dict(state.get("evaluator", {}))
        load_history(hist, state["history"])
        load_loop(loop, state["loop"], hist)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"checkpoint {path}: does not fit this job "
                              f"({type(exc).__name__}: {why})") from None
