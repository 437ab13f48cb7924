"""Training progress: a live bar on a terminal, plain per-epoch lines everywhere (logs and CI keep them)."""

from __future__ import annotations

import sys
import time


class TrainProgress:
    """Steps done, running loss, last test metric and ETA; `live=None` shows the bar only on a terminal."""

    def __init__(self, first_epoch: int, total_epochs: int, steps_per_epoch: int, headline: str,
                 enabled: bool = True, live: bool | None = None):
        self.first_epoch, self.total_epochs, self.headline = first_epoch, total_epochs, headline
        self.enabled = enabled
        self.started = time.perf_counter()
        self._bar = self._task = None
        if enabled and (live if live is not None else sys.stderr.isatty()):
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[status]}"), TextColumn("eta"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            steps = (total_epochs - first_epoch) * steps_per_epoch
            self._task = self._bar.add_task("train", total=steps, status="")
            self._bar.start()

    def step(self, epoch: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, status=f"epoch {epoch + 1}/{self.total_epochs} loss {loss:.4f}")

    def epoch_done(self, epoch: int, loss: float, metrics: dict) -> None:
        """One line per epoch (above the bar on a terminal): loss, test metric, elapsed, ETA."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        done, todo = epoch + 1 - self.first_epoch, self.total_epochs - self.first_epoch
        eta = elapsed / done * (todo - done)
        line = (f"epoch {epoch + 1:>3}/{self.total_epochs}  loss {loss:.4f}  test {self.headline} "
                f"{metrics[self.headline]:.4f}  elapsed {elapsed:5.1f}s  eta {eta:5.1f}s")
        if self._bar is not None:
            self._bar.console.print(line, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
