"""Epsilon schedules: the source notebook's exponential decay exactly, linear annealing, constant,
floors, and per-replica parameters broadcasting against time."""

from __future__ import annotations

import numpy as np
import pytest

from qlab.core import exploration
from qlab.core.exploration import Schedule


def schedule(kind: str, start=1.0, decay=0.995, minimum=0.01, duration=100, R: int = 1,
             unit: str = "episode") -> Schedule:
    full = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (R,)).copy()  # noqa: E731
    return Schedule(kind, full(start), full(decay), full(minimum), full(duration), unit)


def test_exponential_is_the_notebooks_decay() -> None:
    """The source notebook: epsilon = 1, then epsilon *= 0.995 after every episode."""
    sch = schedule("exponential", 1.0, 0.995, 0.0)
    eps = np.array([sch(np.array([t]))[0] for t in range(1000)])
    assert eps[:4].tolist() == [1.0, 0.995, 0.990025, 0.995 ** 3]
    notebook, e = [], 1.0
    for _ in range(1000):
        notebook.append(e)
        e *= 0.995
    np.testing.assert_allclose(eps, notebook, rtol=1e-12, atol=0)


def test_exponential_floor() -> None:
    sch = schedule("exponential", 1.0, 0.5, 0.1)
    t = np.arange(8)
    np.testing.assert_array_equal(sch(t[:, None])[:, 0], np.maximum(0.5 ** t, 0.1))
    assert sch(np.array([3]))[0] == 0.125 and sch(np.array([4]))[0] == 0.1
    assert sch(np.array([10_000]))[0] == 0.1  # no underflow below the floor


def test_linear_reaches_min_at_duration_and_stays() -> None:
    sch = schedule("linear", start=1.0, minimum=0.1, duration=10)
    eps = sch(np.arange(30)[:, None])[:, 0]
    assert eps[0] == 1.0
    assert eps[5] == pytest.approx(0.55)
    assert eps[10] == 0.1
    assert (eps[10:] == 0.1).all()
    assert (np.diff(eps[:11]) < 0).all()  # strictly decreasing until then
    np.testing.assert_allclose(eps[:11], np.linspace(1.0, 0.1, 11), rtol=0, atol=1e-15)


def test_constant() -> None:
    sch = schedule("constant", start=0.3, minimum=0.0)
    eps = sch(np.arange(50)[:, None])
    assert eps.shape == (50, 1) and (eps == 0.3).all()
    assert sch(np.array([7]))[0] == 0.3


def test_per_replica_parameters_broadcast() -> None:
    """R replicas with their own start / decay / floor in one schedule; t per replica, or a
    column of times against every replica."""
    sch = Schedule("exponential", start=np.array([1.0, 0.5, 0.8]), decay=np.array([0.9, 0.99, 1.0]),
                   minimum=np.array([0.05, 0.2, 0.0]), duration=np.ones(3))
    t = np.array([10, 100, 3])
    np.testing.assert_allclose(sch(t), [max(0.9 ** 10, 0.05), max(0.5 * 0.99 ** 100, 0.2), 0.8])
    table = sch(np.arange(5)[:, None])  # (T, R)
    assert table.shape == (5, 3)
    np.testing.assert_allclose(table[:, 0], 0.9 ** np.arange(5))
    np.testing.assert_allclose(table[:, 2], 0.8)
    lin = Schedule("linear", start=np.array([1.0, 0.5]), decay=np.ones(2),
                   minimum=np.array([0.0, 0.1]), duration=np.array([4.0, 8.0]))
    np.testing.assert_allclose(lin(np.array([2, 2])), [0.5, 0.4])
    np.testing.assert_allclose(lin(np.array([4, 8])), [0.0, 0.1])
    const = Schedule("constant", start=np.array([0.2, 0.7]), decay=np.ones(2),
                     minimum=np.zeros(2), duration=np.ones(2))
    np.testing.assert_array_equal(const(np.array([0, 99])), [0.2, 0.7])


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="exploration.name"):
        schedule("cosine")(np.array([0]))


@pytest.mark.parametrize("group", ["exponential", "linear", "constant"])
def test_make_from_composed_config(compose_cfg, group: str) -> None:
    cfg = compose_cfg([f"exploration={group}"])
    sch = exploration.make(cfg.exploration, replicas=3)
    assert sch.kind == group and sch.unit == cfg.exploration.unit
    for name, key in (("start", "start"), ("decay", "decay"), ("minimum", "min"),
                      ("duration", "duration")):
        arr = getattr(sch, name)
        assert arr.shape == (3,) and (arr == cfg.exploration[key]).all()
    assert sch(np.zeros(3, dtype=np.int64)).tolist() == [cfg.exploration.start] * 3
