"""Typer options built from the config declarations (`fedw2v.config.options`), so each option is written once.

    @app.command()
    @declared(SimulateConfig)
    def simulate(clients_manifest: Annotated[Path, typer.Argument(...)], **options: Any) -> None:
        config = build(SimulateConfig, options, clients_manifest=...)

`declared` gives the command one Typer option per declared field (names, help, default, on/off flags); the
command receives them as keyword arguments and `build` turns them into the typed config: paths made absolute,
round lists parsed, unset values (None) left to the config (its default, or the recipe's value), and a broken
rule of the config (its ValueError) turned into a one-line usage error.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import click
import typer

from fedw2v.config import options as opts
from fedw2v.errors import UsageError


def _recipe_note(field: str) -> str:
    from fedw2v.config.train import RECIPES, recipe_value

    values = ", ".join(f"{name} {_show(recipe_value(name, field))}" for name in RECIPES)
    return f" Unset: the recipe's value ({values})."


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def help_text(f: dataclasses.Field, opt: opts.Opt) -> str:
    field = opts.recipe_field(f, opt)
    return opt.help + (_recipe_note(field) if field else "")


def _param(f: dataclasses.Field, opt: opts.Opt, tp: Any) -> inspect.Parameter:
    default = None if opt.recipe else opts.default_of(f)
    kind = opts.base_type(tp)
    names = list(opts.flags(f, opt))
    if kind is bool and opt.negative:
        names[0] = f"{names[0]}/{opt.negative}"
    if opt.rounds or opt.parse:
        kind, default = str, ",".join(_show(v) for v in default) if isinstance(default, tuple) else default
    elif opt.path:
        kind = Path
        default = None if default in ("", None) else default
    required = default is dataclasses.MISSING
    show: bool | str = opt.shown_default or (not required and default is not None and not opt.path)
    info = typer.Option(*names, help=help_text(f, opt), show_default=show, metavar=opt.metavar or None,
                        click_type=OutputPath(opt.output) if opt.output else None)
    annotation = Annotated[kind if required or default is not None else kind | None, info]
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=inspect.Parameter.empty if required else default)


def params(cls: type, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One Typer parameter per declared command-line option of ``cls``."""
    return [_param(f, opt, tp) for f, opt, tp in opts.options(cls) if opt.cli and f.name not in skip]


def declared(*classes: type, skip: tuple[str, ...] = ()) -> Callable:
    """Give a command the declared options of ``classes`` (after its arguments, before its own options); the
    command takes them as ``**options``."""

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind != inspect.Parameter.VAR_KEYWORD]
        generated = [p for cls in classes for p in params(cls, skip)]
        names = {p.name for p in generated}

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            return fn(**{k: v for k, v in kwargs.items() if k not in names},
                      **{k: v for k, v in kwargs.items() if k in names})

        arguments = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if _is_argument(p)]
        rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if not _is_argument(p)]
        command.__signature__ = inspect.Signature(arguments + generated + rest)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in arguments + generated + rest}
        del command.__wrapped__  # Typer must read the signature above, not the function's
        return command

    return decorate


def _is_argument(p: inspect.Parameter) -> bool:
    meta = getattr(p.annotation, "__metadata__", ())
    return any(isinstance(m, typer.models.ArgumentInfo) for m in meta) or p.name == "ctx"


def values(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """The command-line values of ``cls``'s declared options as config values: paths absolute, round lists
    parsed, unset (None) left out; other keys of ``given`` are ignored."""
    out: dict[str, Any] = {}
    for f, opt, _ in opts.options(cls):
        if f.name not in given or given[f.name] is None:
            continue
        value = given[f.name]
        if opt.rounds:
            value = config_or_usage_error(opts.parse_rounds, value, opts.flags(f, opt)[0])
        elif opt.parse:
            value = config_or_usage_error(opt.parse, value)
        elif opt.path:
            value = str(Path(value).resolve()) if opt.absolute else str(value)
        out[f.name] = value
    return out


def build(cls: type, given: dict[str, Any], **fixed: Any) -> Any:
    """The typed config from the command-line values (`values`) and ``fixed`` ones; a broken rule of the
    config becomes a one-line usage error."""
    return config_or_usage_error(cls, **values(cls, given), **fixed)


class OutputPath(click.ParamType):
    """A path a command writes (``kind`` "file" or "dir"), checked when the command line is parsed
    (`fedw2v.atomic.check_target`): an empty path, a device, FIFO or socket, or a parent that is a file is a
    one-line usage error naming the option, before any work starts."""

    name = "path"

    def __init__(self, kind: str = "file") -> None:
        self.kind = kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        from fedw2v.atomic import check_target
        from fedw2v.errors import InputError

        try:
            return check_target(value, self.kind)
        except InputError as exc:
            self.fail(str(exc), param, ctx)


def config_or_usage_error(factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return factory(*args, **kwargs)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
