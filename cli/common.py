"""What both commands share: one-line errors, --debug, exit codes."""
from __future__ import annotations

import functools
import sys
import traceback

import click

from spa_data.errors import SpaError


def report_errors(group: click.Group):
    """Run a click group so that bad input ends in one line and exit code 1.

    Usage errors keep click's own handling (exit 2). ``SpaError`` and ``OSError``
    (a full disk, an unreadable file) print ``error: <message>``; with ``--debug``
    (or SPA_DEBUG=1) the traceback is printed too.
    """

    @functools.wraps(group.main)
    def main(argv=None):
        debug = "--debug" in (argv if argv is not None else sys.argv[1:])
        try:
            return group.main(args=argv, standalone_mode=False)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except (SpaError, OSError) as e:
            if debug or _env_debug():
                traceback.print_exc()
            msg = str(e) if isinstance(e, SpaError) else f"{getattr(e, 'filename', '') or ''}: {e.strerror or e}".lstrip(": ")
            click.echo(f"error: {msg}", err=True)
            sys.exit(1)

    return main


def _env_debug() -> bool:
    import os
    return os.environ.get("SPA_DEBUG", "") not in ("", "0")


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on error.")
