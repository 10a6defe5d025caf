"""Fused sweeps: sweep points that differ only in per-replica values train as replicas of one
job, and each still lands as its own MLflow run with exactly the params it would have had as
a job of its own.

Sweeper side (:func:`fuse`, used by ``hydra/sweeper=fused`` and the preflight check): expand
the sweep into one override list per point, as Hydra's basic sweeper does; points whose
other overrides are equal form a group; a group of more than one point becomes one job with
the shared overrides plus ``+qlab_fused=[{seed:0,exploration.decay:0.99}, ...]``, one dict per
point holding its values of the fusable keys the sweep varies. Job side: :mod:`qlab.config.batch`.
"""

from __future__ import annotations

from collections.abc import Sequence

from qlab.config.batch import FUSABLE, KEY, TAG, check_keys  # noqa: F401 - re-exported


def fuse(jobs: Sequence[Sequence[str]], keys: Sequence[str] = FUSABLE) -> list[list[str]]:
    """Jobs (override lists, as the basic sweeper expands a sweep) -> fused jobs: points that
    differ only in ``keys`` become one job (see the module docstring). A key fuses only where
    the sweep varies it and every value is a plain number; a group of one stays as it was."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = check_keys(keys)
    parser = OverridesParser.create()
    parsed = [parser.parse_overrides(list(job)) for job in jobs]
    values: dict[str, set[str]] = {}
    numeric: dict[str, bool] = {}
    for job in parsed:
        for o in job:
            k = o.get_key_element()  # with its +/~ prefix and @package: those never fuse
            values.setdefault(k, set()).add(o.get_value_element_as_str())
            v = o.value()
            numeric[k] = numeric.get(k, True) and type(v) in (int, float)
    fused = {k for k in keys if len(values.get(k, ())) > 1 and numeric[k]}
    if not fused:
        return [list(job) for job in jobs]
    groups: dict[tuple[str, ...], list[tuple[list[str], dict[str, str]]]] = {}
    for job, ovs in zip(jobs, parsed, strict=True):
        shared = tuple(line for line, o in zip(job, ovs, strict=True)
                       if o.get_key_element() not in fused)
        point = {o.get_key_element(): o.get_value_element_as_str() for o in ovs
                 if o.get_key_element() in fused}
        groups.setdefault(shared, []).append((list(job), point))
    out = []
    for shared, members in groups.items():
        if len(members) == 1:
            out.append(members[0][0])
            continue
        points = ",".join("{" + ",".join(f"{k}:{v}" for k, v in p.items()) + "}"
                          for _, p in members)
        out.append([*shared, f"+{KEY}=[{points}]"])
    return out
