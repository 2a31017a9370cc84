"""One declaration per option: a config dataclass field whose metadata holds its CLI names, help and default.

    rounds: int = option(100, "Federated rounds.")
    lr_encoder: float | None = train_option("lr_encoder")     # declared once, in TrainConfig; unset = recipe's

Everything else is derived from these declarations: the Typer options of a command (`fedw2v.cli_options`), the
Flower run config (`to_run_config` / `from_run_config`, pyproject's ``[tool.flwr.app.config]``), the README's
option tables and the keys a ``--resume`` may change (`fedw2v.config.docs` writes the README and pyproject
blocks; a test fails when they are stale). No module here imports Typer, torch or Flower.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from typing import Any

META = "fedw2v"
UNSET = ""  # how "unset: the recipe's value" is written in a Flower run config (TOML has no null)


@dataclass(frozen=True)
class Opt:
    """What a field's declaration says about it as an option (``field.metadata[META]``)."""

    help: str
    flags: tuple[str, ...] = ()  # CLI names; default: --field-name
    negative: str = ""  # for a boolean: the "off" flag (--no-newbob); empty: a plain on-flag
    choices: tuple[str, ...] = ()  # allowed values (shown in help, checked by the config's own rules)
    shown_default: str = ""  # how docs show a default that is computed ("half the clients per round")
    recipe: str | bool = ""  # the TrainConfig field whose recipe value applies when unset (True: this field)
    path: bool = False  # a file or directory: the CLI takes a path (relative to the app directory under flwr run)
    absolute: bool = False  # a path the CLI stores absolute
    output: str = ""  # a path fedw2v writes: "file" | "dir" (checked when parsed: `fedw2v.atomic.check_target`)
    rounds: bool = False  # a tuple of round numbers, written "3,5,10" on the command line and in a run config
    cli: bool = True  # an option of the command line
    run_config: bool = True  # a key of the Flower run config
    example: Any = None  # the run-config value of a field without a default (pyproject.toml)
    resumable: bool = False  # may differ when a run is resumed
    metavar: str = ""
    parse: Any = None  # the command line gives a string that this callable turns into the value (ValueError: bad)


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field declared as an option (see `Opt` for the keywords)."""
    if isinstance(kwargs.get("flags"), str):
        kwargs["flags"] = (kwargs["flags"],)
    meta = {META: Opt(help=help, **kwargs)}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable option defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=meta)


def declaration(cls: type, name: str) -> Opt:
    """The `Opt` of field ``name`` of ``cls``."""
    for f in dataclasses.fields(cls):
        if f.name == name and META in f.metadata:
            return f.metadata[META]
    raise KeyError(f"{cls.__name__}.{name} is not a declared option")


def options(cls: type) -> list[tuple[dataclasses.Field, Opt, Any]]:
    """(field, declaration, type) of every declared option of ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[META], hints[f.name]) for f in dataclasses.fields(cls) if META in f.metadata]


def recipe_field(f: dataclasses.Field, opt: Opt) -> str:
    """The TrainConfig field whose recipe value an unset option takes ('' when the option has a plain default)."""
    return f.name if opt.recipe is True else opt.recipe or ""


def flags(f: dataclasses.Field, opt: Opt) -> tuple[str, ...]:
    return opt.flags or ("--" + f.name.replace("_", "-"),)


def base_type(tp: Any) -> Any:
    """``int`` for ``int | None``; the type itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if type(None) in typing.get_args(tp) and len(args) == 1:
        return args[0]
    return tp


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


# ---------------------------------------------------------------- values: run config, config.json, parsing


def parse_rounds(value: Any, name: str = "rounds") -> tuple[int, ...]:
    """Comma-separated round numbers ("3,5,10"; empty: none), or a list of them; ValueError naming ``name``."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [v.strip() for v in str(value).split(",") if v.strip()]
    try:
        return tuple(int(v) for v in items)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be comma-separated round numbers, not {value!r}") from None


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"not a boolean: {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def convert(value: Any, tp: Any, opt: Opt, name: str) -> Any:
    """A run-config or config.json value as the field's type (``""`` for a recipe option: unset)."""
    if opt.rounds:
        return parse_rounds(value, name)
    if value is None or (opt.recipe and value == UNSET):
        return None
    kind = base_type(tp)
    if kind is bool:
        return _bool(value)
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return kind(value)


def to_run_config(config: Any) -> dict[str, Any]:
    """Flat kebab-case keys with TOML values (Flower's run config) for every run-config option of ``config``."""
    out: dict[str, Any] = {}
    for f, opt, _ in options(type(config)):
        if not opt.run_config:
            continue
        value = getattr(config, f.name)
        if opt.rounds:
            value = ",".join(str(r) for r in value)
        elif value is None:
            value = UNSET
        out[f.name.replace("_", "-")] = value
    return out


def from_run_config(cls: type, run_config: dict[str, Any], base_dir: str | None = None) -> Any:
    """Inverse of `to_run_config`; unknown keys are an error naming them. Relative paths are taken from
    ``base_dir`` (the app directory under `flwr run`)."""
    declared = {f.name: (opt, tp) for f, opt, tp in options(cls) if opt.run_config}
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if name not in declared:
            unknown.append(key)
            continue
        opt, tp = declared[name]
        value = convert(value, tp, opt, key)
        if opt.path and value and base_dir and not os.path.isabs(value):
            value = os.path.join(base_dir, value)
        kwargs[name] = value
    if unknown:
        raise ValueError(f"unknown run-config keys: {', '.join(sorted(unknown))}")
    return cls(**kwargs)


def from_recorded(cls: type, data: dict[str, Any]) -> Any:
    """A config from its recorded JSON form (`to_dict`): declared options converted, other fields as they are."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        opt = f.metadata.get(META)
        kwargs[f.name] = convert(data[f.name], hints[f.name], opt, f.name) if opt else data[f.name]
    return cls(**kwargs)


def resumable(cls: type) -> tuple[str, ...]:
    """Fields that may differ when a run is resumed (declared ``resumable=True``)."""
    return tuple(f.name for f, opt, _ in options(cls) if opt.resumable)


def finite(*values: float) -> bool:
    """Every value a finite number (NaN and infinities fail every range rule, as they should)."""
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
