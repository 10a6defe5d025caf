"""Run names a researcher can tell apart: ``AGENT-ENV[-KEYVALUE...]-seedN``.

A sweep's runs differ in the values it sweeps (``exploration.decay``, ``agent.lr``, ...);
those values go into every run's name (``dqn-griddy-decay0.999-seed3``), so that the runs
table, the compare view and the report's run list never show two runs of different groups
under one name. The sweep hands its swept keys to each job in the :data:`SWEPT_TAG` tag.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

SWEPT_TAG = "qlab.swept_keys"  # run tag: the keys the run's sweep varies, comma-separated
# Already in every name (agent and env), or the replica axis itself (the seed).
_IMPLIED = ("agent", "agent.name", "env", "env.name", "seed", "replicas")


def swept(tags: Mapping[str, str] | None) -> list[str]:
    """The swept keys recorded in ``tags`` (empty outside a sweep)."""
    value = (tags or {}).get(SWEPT_TAG, "")
    return [k for k in value.split(",") if k]


def name_part(key: str, value: str) -> str:
    """``exploration.decay``, ``0.999`` -> ``decay0.999``; a config group (``exploration``,
    recorded as ``exploration.name``) by its value alone."""
    last = key.rsplit(".", 1)[-1]
    if last == "name" or "." not in key:
        return str(value)
    return f"{last}{value}"


def run_name(params: Mapping[str, str], keys: Sequence[str]) -> str:
    """The name of the run with MLflow ``params`` (dotted keys, as a replica records them)
    in a sweep over ``keys``."""
    parts = [params.get("agent.name", "agent"), params.get("env.name", "env")]
    for key in keys:
        if key in _IMPLIED:
            continue
        if key in params:
            parts.append(name_part(key, params[key]))
        elif f"{key}.name" in params:  # a swept config group
            parts.append(name_part(f"{key}.name", params[f"{key}.name"]))
    parts.append(f"seed{params.get('seed', '')}")
    return "-".join(parts)


def run_names(batch, tags: Mapping[str, str] | None = None) -> list[str]:
    """One name per replica of ``batch`` (:class:`qlab.config.batch.Batch`), carrying the
    values of the keys its sweep varies (see :func:`swept`)."""
    keys = swept(tags)
    return [run_name(batch.params(k), keys) for k in range(len(batch.seeds))]
