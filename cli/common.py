"""What both commands share: one-line errors in the words of the command line, --debug, exit codes."""
from __future__ import annotations

import functools
import signal
import sys
import traceback

import click

from spa_common.errors import ParamError, SpaError


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: every ``finally`` runs, so nothing half-written stays behind."""


def _terminate(signum, frame) -> None:
    raise Terminated()


class OptionsCommand(click.Command):
    """A command that reports a library ``ParamError`` in its own option names.

    The library names its parameters (``strides 8,x: ...``); an option that sets one carries
    the parameter's name (``click.option("--scales", "strides")``), so the message names the
    option the user typed (``--scales 8,x: ...``).
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ParamError as e:
            options = {p.name: p.opts[0] for p in self.params if isinstance(p, click.Option)}
            raise SpaError(e.named(options)) from e


class OptionsGroup(click.Group):
    """A group whose commands are ``OptionsCommand``s."""

    command_class = OptionsCommand


def report_errors(group: click.Group):
    """Run a click group so that bad input ends in one line and exit code 1.

    Usage errors keep click's own handling (exit 2). ``SpaError`` and ``OSError``
    (an unreadable file) print ``error: <message>``; with ``--debug`` (or SPA_DEBUG=1)
    the traceback is printed too. SIGINT and SIGTERM stop the command cleanly with one
    line and exit 130 / 143 (``spa-train`` saves a checkpoint first, see spa_train.engine).
    """

    @functools.wraps(group.main)
    def main(argv=None):
        debug = "--debug" in (argv if argv is not None else sys.argv[1:])
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return group.main(args=argv, standalone_mode=False)
        except click.exceptions.Abort as e:
            name, code = ("SIGTERM", 143) if isinstance(e.__cause__, Terminated) else ("SIGINT", 130)
            click.echo(f"error: interrupted ({name}); nothing half-written is left: rerun to start again "
                       "or to resume", err=True)
            sys.exit(code)
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
        finally:
            signal.signal(signal.SIGTERM, previous)

    return main


def _env_debug() -> bool:
    import os
    return os.environ.get("SPA_DEBUG", "") not in ("", "0")


def at_least(minimum: int):
    """A click callback: an integer option below ``minimum`` is a one-line error naming it."""
    def check(ctx, param, value: int) -> int:
        if value < minimum:
            raise SpaError(f"--{param.name.replace('_', '-')} {value}: must be at least {minimum}")
        return value
    return check


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks on error.")
