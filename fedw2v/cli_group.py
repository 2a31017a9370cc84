"""The `fedw2v` command group: the one place where an exception escaping a command becomes one line on stderr and
an exit code (the mapping itself is `fedw2v.errors`); ``--debug`` or ``FEDW2V_DEBUG=1`` show the traceback. Also how
the executable ends (`run_main`)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from typer.core import TyperGroup

from fedw2v.errors import EXIT_FAILURE, exit_code_for, format_click_error, format_error, stdout_to_devnull


class ErrorMappingGroup(TyperGroup):
    """Maps every exception escaping a command to one line on stderr and an exit code (--debug: traceback);
    click's own errors (a malformed or unknown option, a missing argument) are one line too (`main`)."""

    def invoke(self, ctx: click.Context) -> Any:
        def debug() -> bool:  # (--debug is known once the group's callback has run)
            return bool((ctx.obj or {}).get("debug")) or os.environ.get("FEDW2V_DEBUG") == "1"

        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BrokenPipeError:  # the reader of stdout went away (`fedw2v … | head`): stop quietly
            stdout_to_devnull()
            raise click.exceptions.Exit(EXIT_FAILURE) from None
        except KeyboardInterrupt as exc:
            if debug():
                import traceback

                traceback.print_exc()
            _print_error(format_error(exc))
            raise click.exceptions.Exit(exit_code_for(exc)) from None
        except Exception as exc:  # noqa: BLE001 -- this is the one place errors are turned into messages
            if debug():
                raise
            _print_error(format_error(exc))
            raise click.exceptions.Exit(exit_code_for(exc)) from None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            if not standalone_mode:
                raise
            if type(exc).__name__ != "NoArgsIsHelpError":  # (that one has printed the help already)
                _print_error(format_click_error(exc))
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            if not standalone_mode:
                raise
            _print_error("aborted")
            sys.exit(EXIT_FAILURE)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)


def _print_error(line: str) -> None:
    from fedw2v.ui.console import err_console

    err_console.print(line, markup=False, soft_wrap=True, highlight=False)


# Set in the context object by a command that leaves nothing to tear down (transcribe): `run_main` then ends the
# process with os._exit once the command's output is flushed.
EXIT_NOW = "exit_now"


def run_main(app: Any) -> None:
    """Run the `fedw2v` app as the executable. After a command that set ``EXIT_NOW``, the process ends without
    the interpreter's teardown, which with torch's CUDA build pages ~125 MB of CUDA libraries back in for their
    static destructors: the largest part of a short transcription's peak memory on a CPU (BENCHMARKS.md,
    "transcribe: memory")."""
    state: dict = {}
    try:
        app(obj=state)
    except SystemExit as exc:
        if not state.get(EXIT_NOW):
            raise
        exit_now(exc.code)


def exit_now(code: object) -> None:
    """Flush stdout and stderr, then `os._exit` with ``code`` (as `sys.exit` reads it)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
