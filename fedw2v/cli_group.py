"""The `fedw2v` command group: the one place where an exception escaping a command becomes one line on stderr and
an exit code (the mapping itself is `fedw2v.errors`); ``--debug`` or ``FEDW2V_DEBUG=1`` show the traceback."""

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
