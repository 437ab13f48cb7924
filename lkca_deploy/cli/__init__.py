"""The `lkca-deploy` command line: a thin typer layer; every command is a package function first.

User errors (lkca_deploy.errors.UserError) end as one line on stderr and exit code 2; gates (check, parity) exit 1
when the model or an engine fails.
"""

from __future__ import annotations

import sys

import typer

from lkca_deploy.cli.common import app
from lkca_runtime.errors import UserError

# Each module registers its commands on `app`, in this order in `lkca-deploy --help`: the data flow, then the device.
from lkca_deploy.cli import models, graph, engines, runs, device  # noqa: F401  isort: skip

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
    except ImportError:
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from lkca_deploy.interrupts import Interrupted, interrupts_raise

    try:
        with interrupts_raise():
            code = app(standalone_mode=False)
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
    sys.exit(code if isinstance(code, int) else 0)


