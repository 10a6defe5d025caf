"""``hydra/sweeper=fused``: Hydra's basic sweeper, with sweep points that differ only in
per-replica values (seed, replicas, agent.lr, agent.gamma, exploration.start / decay / min /
duration) launched as one job each group (:func:`qlab.sweeps.fused.fuse`).

Hydra finds it by scanning the ``hydra_plugins`` namespace package; importing this module
stores its config as ``hydra/sweeper/fused``. It keeps the basic sweeper's keys (``params``,
``max_batch_size``: jobs per launcher batch, after fusing) and adds ``fuse``, the keys that
may fuse (default: all of them; ``hydra.sweeper.fuse=[seed]`` fuses only seeds).
"""

# No ``from __future__ import annotations``: Hydra's plugin scan runs this module before it is
# in sys.modules, where dataclasses cannot resolve string annotations.
from dataclasses import dataclass, field

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override

from qlab.sweeps.fused import FUSABLE, check_keys, fuse


@dataclass
class FusedSweeperConf:
    _target_: str = "hydra_plugins.qlab_fused_sweeper.fused_sweeper.FusedSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    fuse: list[str] = field(default_factory=lambda: list(FUSABLE))


ConfigStore.instance().store(group="hydra/sweeper", name="fused", node=FusedSweeperConf,
                             provider="qlab")


class FusedSweeper(BasicSweeper):
    """The basic sweeper's cartesian product, fused (see the module docstring)."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None,
                 fuse: list[str] | None = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.fuse = check_keys(list(FUSABLE) if fuse is None else list(fuse))

    def split_arguments(self, overrides: list[Override],  # type: ignore[override]
                        max_batch_size: int | None) -> list[list[list[str]]]:
        """The basic sweeper's jobs, fused, then cut into launcher batches."""
        jobs = fuse(BasicSweeper.split_arguments(overrides, None)[0], self.fuse)
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))
