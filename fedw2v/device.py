"""Where computation runs: `--device auto | cpu | cuda` resolved against this machine."""

from __future__ import annotations

from fedw2v.errors import EnvironmentProblem, UsageError

DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (CUDA when available) | cpu | cuda."


def check_device(name: str) -> str:
    """``name`` when it is one of DEVICES; ValueError otherwise (configs call it in their checks, so the command
    line gets a one-line usage error before any work)."""
    if name not in DEVICES:
        raise ValueError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    return name


def resolve_device(name: str) -> str:
    try:
        check_device(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("--device cuda: no CUDA GPU is available here", hint="use --device cpu or auto")
    return name
