"""Where computation runs: `--device auto | cpu | cuda` resolved against this machine."""

from __future__ import annotations

from fedw2v.errors import EnvironmentProblem

DEVICES = ("auto", "cpu", "cuda")
DEVICE_HELP = "auto (CUDA when available) | cpu | cuda."


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentProblem("--device cuda: no CUDA GPU is available here", hint="use --device cpu or auto")
    return name
