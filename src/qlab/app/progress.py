"""The progress bar a job shows while it trains."""

from __future__ import annotations

from tqdm.auto import tqdm

from qlab.core.history import History


class ProgressBar:
    """One bar per run over all replicas' episodes; silent when stderr is not a terminal."""

    def __init__(self, total: int, desc: str) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="ep", disable=None, leave=False)

    def update(self, history: History) -> None:
        self._bar.update(int(history.done.sum()) - self._bar.n)

    def close(self) -> None:
        self._bar.close()
