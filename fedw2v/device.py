"""Where and how computation runs: `--device auto | cpu | cuda` and `--precision fp32 | bf16 | fp16` resolved
against this machine, and a worker process's CPU threads."""

from __future__ import annotations

from collections.abc import Callable

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


# What a CPU needs for bf16 autocast to pay: native bf16 arithmetic. Without it oneDNN emulates bf16 (AVX-512
# alone), which is slower than fp32.
CPU_BF16_FEATURES = ("amx_bf16", "avx512_bf16")


def cpu_bf16_feature() -> str | None:
    """The bf16 instruction set of this CPU that autocast uses (amx_bf16 or avx512_bf16), or None."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = {"amx_bf16": getattr(cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(cpu, "_is_avx512_bf16_supported", None)}
    if all(check is not None for check in checks.values()):
        return next((name for name, check in checks.items() if check()), None)
    flags = _cpuinfo_flags()  # an older torch: read them from Linux
    return next((name for name in CPU_BF16_FEATURES if name in flags), None)


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def resolve_precision(precision: str, device: str, bf16_feature: Callable[[], str | None] | None = None) -> str:
    """The precision training uses on a resolved ``device`` (cpu, cuda, cuda:N) for ``--precision``.

    CUDA: as asked. CPU: fp32; bf16 when the CPU has native bf16 instructions (``bf16_feature``, by default
    `cpu_bf16_feature`), else EnvironmentProblem; fp16 trains in fp32 (no fp16 autocast training on the CPU).
    """
    if device.startswith("cuda") or precision == "fp32":
        return precision
    if precision == "fp16":
        return "fp32"
    if not (bf16_feature or cpu_bf16_feature)():
        raise EnvironmentProblem(
            "--precision bf16 on the CPU: this CPU has no bf16 instructions (avx512_bf16 or amx_bf16), so bf16 "
            "would be slower than fp32",
            hint="use --precision fp32 (the default) on this machine",
        )
    return precision


def set_cpu_threads(threads: int) -> int:
    """Use ``threads`` (at least 1) torch CPU threads in this process; returns the number set."""
    import torch

    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
