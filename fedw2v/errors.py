"""Domain exceptions of fedw2v, and the one place that turns them into messages and exit codes.

Every error a user can cause (bad input, bad options, a missing tool) is a `FedW2VError` subclass with a
message that names the file, line or utterance and says how to fix it. `exit_code_for` and
`format_error` are the only mapping from exceptions to what the command line prints and returns.
"""

from __future__ import annotations

import os
import sys
from typing import Any

# Exit codes, in one table.
EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran but some of its work failed (e.g. one of several files)
EXIT_INPUT = 2  # usage and input errors (bad option, missing/invalid file), as click/typer do
EXIT_ENVIRONMENT = 3  # something the machine lacks (a synthesiser, a GPU, disk space)
EXIT_INTERRUPTED = 130


class FedW2VError(Exception):
    """Base class: a one-line, user-facing problem. `hint` says how to fix it."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line, hint appended
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(FedW2VError):
    """An option value that cannot work (malformed list, out-of-range number, conflicting flags)."""


class InputError(FedW2VError):
    """A file or directory the user pointed at is missing or unusable."""


class CorpusError(InputError):
    """A corpus directory that does not have the expected layout, or bad segments under --strict."""


class ManifestError(InputError):
    """A manifest file that is not a fedw2v manifest of a known schema version."""


class AggregationError(FedW2VError):
    """Client updates that cannot be averaged (non-finite or all-zero weights, mismatched tensors)."""

    exit_code = EXIT_FAILURE


class RunFailed(FedW2VError):
    """A federated run stopped (too few clients succeeded); its last checkpoint is intact."""

    exit_code = EXIT_FAILURE


class EnvironmentProblem(FedW2VError):
    """Something this machine lacks: a speech synthesiser, a GPU, a package."""

    exit_code = EXIT_ENVIRONMENT


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, FedW2VError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def format_error(exc: BaseException) -> str:
    """The one line printed for an error (no traceback)."""
    if isinstance(exc, FedW2VError):
        return f"error: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = str(exc).strip().splitlines()
    detail = text[0] if text else ""
    return f"internal error: {type(exc).__name__}: {detail} (rerun with --debug for the traceback)"


def format_click_error(exc: Any) -> str:
    """The one line for an error click found on the command line (a click.ClickException: a malformed or unknown
    option, a missing argument), instead of click's usage box."""
    text = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"error: {text.rstrip('.')}" + (f" (see `{ctx.command_path} --help`)" if ctx is not None else "")


def stdout_to_devnull() -> None:
    """After a BrokenPipeError (the reader of stdout went away, `fedw2v … | head`): point stdout at /dev/null, so
    that the flush at exit does not raise it again."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor (a test runner's)
        pass
