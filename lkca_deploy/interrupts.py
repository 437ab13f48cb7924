"""SIGINT and SIGTERM end a command the same way: as an exception, so every `with` block on the way out cleans up
(atomic writers remove their temp files, work folders are deleted), then one line on stderr.

SIGTERM is what `timeout`, CI runners and container stops send; left to Python's default it kills the process
at once, leaving temp files behind. It is not a KeyboardInterrupt subclass on purpose: typer turns those into a
silent exit 130 before the CLI could say anything.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A signal asked the command to stop. BaseException, like KeyboardInterrupt: `except Exception` lets it by."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


_pending: int | None = None  # the signal that arrived, until the command ends


def _raise(signum: int, frame) -> None:
    global _pending
    _pending = signum
    # Cleanup runs after this; a second Ctrl-C must not cut it short and leave the temp files after all.
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def raise_if_interrupted() -> None:
    """Raise Interrupted again if a signal arrived but its exception never got out: a library's bare `except:`
    (an optional import probed during `import torch`, say) swallowed it, and the later signals are ignored by
    then. Called where long work loops (training batches, pipeline stages), never during cleanup."""
    if _pending is not None:
        raise Interrupted(_pending)


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise Interrupted, and so does any error raised after one arrived;
    the previous handlers come back after it."""
    global _pending
    _pending = None
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _raise)
    try:
        yield
    except Exception as error:
        # A library that catches the Interrupted and raises its own error (torch.onnx.export wraps whatever its
        # capture raised in a TorchExportError) still ends as the interrupt it was.
        if _pending is not None:
            raise Interrupted(_pending) from error
        raise
    finally:
        _pending = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
