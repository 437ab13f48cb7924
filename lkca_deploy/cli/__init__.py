"""The `lkca-deploy` command line: a thin typer layer; every command is a package function first.

User errors (lkca_deploy.errors.UserError) end as one line on stderr and exit code 2; gates (check, parity) exit 1
when the model or an engine fails.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from lkca_deploy.cli.common import app, warn
from lkca_runtime.errors import UserError

# Each module registers its commands on `app`, in this order in `lkca-deploy --help`: the data flow, then the device.
from lkca_deploy.cli import models, graph, engines, runs, device  # noqa: F401  isort: skip
from lkca_deploy.interrupts import Interrupted, interrupts_raise

__all__ = ["app", "main"]


def main() -> None:
    """Run the app; a user's mistake (a UserError, or a usage error typer finds: unknown option, value out of
    range) becomes one line on stderr and exit code 2, never a traceback. SIGINT and SIGTERM clean up as an
    exception would (temp files, work folders), then say "interrupted" and exit 128 + the signal number."""
    try:
        from typer._click.exceptions import (  # typer vendors click
            ClickException,
            NoArgsIsHelpError,
            UsageError,
        )
    except ImportError:  # an older typer: click itself
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    stdout = sys.stdout
    sys.stdout = _GuardedOutput(stdout)
    try:
        with interrupts_raise(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            code = app(standalone_mode=False)
            sys.stdout.flush()  # a full disk or closed pipe on stdout shows here, while it can still be said
    except OutputFailed as e:
        _silence_stdout(stdout)
        typer.echo(f"lkca-deploy: error: cannot write to standard output: {e}", err=True)
        sys.exit(2)
    except UserError as e:
        typer.echo(f"lkca-deploy: error: {e}", err=True)
        sys.exit(2)
    except NoArgsIsHelpError as e:
        typer.echo(e.format_message(), err=True)
        sys.exit(2)
    except UsageError as e:
        hint = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        typer.echo(f"lkca-deploy: error: {e.format_message()}{hint}", err=True)
        sys.exit(e.exit_code)
    except ClickException as e:
        typer.echo(f"lkca-deploy: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except (Interrupted, KeyboardInterrupt) as e:
        typer.echo("lkca-deploy: interrupted", err=True)
        sys.exit(e.exit_code if isinstance(e, Interrupted) else 130)
    finally:
        sys.stdout = stdout
    sys.exit(code if isinstance(code, int) else 0)


class OutputFailed(Exception):
    """Standard output cannot take what the command prints (a full disk behind `> file`, a closed pipe)."""


class _GuardedOutput:
    """sys.stdout, whose write errors become OutputFailed: told apart from the errors of the files a command
    writes (fsutil says those in the user's words)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as e:
            raise OutputFailed(e.strerror or str(e)) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as e:
            raise OutputFailed(e.strerror or str(e)) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence_stdout(stream) -> None:
    """Point the broken standard output at /dev/null so the interpreter's own flush at exit says nothing more."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):  # not a real file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings in the CLI's one-line form, not Python's two lines of file, line number and source."""
    text = str(message).strip().splitlines()
    warn(text[0] if text else category.__name__)


