"""One small real sweep per test session, shared by the analysis tests: tabular Q-learning
and Monte-Carlo x two epsilon decays x 3 seeds, 30 episodes, in a temp sqlite store."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import qlab_train

EXPERIMENT = "analysis_small"
AGENTS = ("tabular_q", "tabular_mc")
DECAYS = (0.99, 0.995)
SEEDS = 3
EPISODES = 30
EVAL_EVERY = 10


@dataclass(frozen=True)
class SmallSweep:
    uri: str
    root: Path
    experiment: str = EXPERIMENT


@pytest.fixture(scope="session")
def small_sweep(tmp_path_factory, sqlite_store) -> SmallSweep:
    root = tmp_path_factory.mktemp("small_sweep")
    uri = sqlite_store(root)
    out = qlab_train(
        ["-m", f"agent={','.join(AGENTS)}",
         f"exploration.decay={','.join(map(str, DECAYS))}", f"replicas={SEEDS}",
         f"episodes={EPISODES}", f"eval_every={EVAL_EVERY}", f"experiment_name={EXPERIMENT}",
         f"tracking.uri={uri}"], uri, root)
    assert out.returncode == 0, out.stderr[-3000:]
    return SmallSweep(uri=uri, root=root)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _assert_sensible(path: Path, min_side: int = 250, max_side: int = 3000) -> None:
    w, h = png_size(path)
    assert min_side <= w <= max_side and min_side <= h <= max_side, (Path(path).name, w, h)
    assert Path(path).stat().st_size > 5_000  # not blank


@pytest.fixture
def assert_png():
    """``assert_png(path, min_side=250, max_side=3000)``: a real PNG of a sensible size."""
    return _assert_sensible


@pytest.fixture(scope="session")
def loaded(small_sweep):
    """The small sweep loaded once (tests must not modify its frames)."""
    from qlab.analysis.runs import load_sweep

    return load_sweep(small_sweep.experiment, uri=small_sweep.uri)
