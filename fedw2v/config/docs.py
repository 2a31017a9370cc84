"""The option tables of the README and pyproject's Flower run config, generated from the declarations.

    python -m fedw2v.config.docs           # rewrite the generated blocks of README.md and pyproject.toml
    python -m fedw2v.config.docs --check   # exit 1 (naming the stale blocks) when either differs

A generated block sits between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->`` in the README and
between ``# generated:NAME`` and ``# /generated:NAME`` in pyproject.toml. tests/test_config_docs.py runs the
check, so a new or changed option cannot land without its docs.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from fedw2v.config import options as opts


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "" or value == ():
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _flag(f: dataclasses.Field, opt: opts.Opt) -> str:
    names = opts.flags(f, opt)
    shown = f"`{names[0]}`" + (f" / `{opt.negative}`" if opt.negative else "")
    return shown + "".join(f", `{n}`" for n in names[1:])


def _default(f: dataclasses.Field, opt: opts.Opt) -> str:
    if opts.recipe_field(f, opt):
        return "recipe"
    if opt.shown_default:
        return opt.shown_default
    default = opts.default_of(f)
    return "required" if default is dataclasses.MISSING else _cell(default)


def options_table(cls: type) -> str:
    """| option | default | meaning | for every command-line option of ``cls``."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f, opt, _ in opts.options(cls):
        if opt.cli:
            rows.append(f"| {_flag(f, opt)} | {_default(f, opt)} | {opt.help.replace('|', chr(92) + '|')} |")
    return "\n".join(rows)


def recipes_table() -> str:
    """The recipes' values, stated once: | option | paper | tiny |."""
    from fedw2v.config.train import RECIPES, TrainConfig, recipe_value

    rows = ["| option | " + " | ".join(RECIPES) + " |", "|---|" + "---|" * len(RECIPES)]
    for f, opt, _ in opts.options(TrainConfig):
        if opts.recipe_field(f, opt):
            values = " | ".join(_cell(recipe_value(name, f.name)) for name in RECIPES)
            rows.append(f"| {_flag(f, opt)} | {values} |")
    return "\n".join(rows)


def run_config_toml(cls: type) -> str:
    """pyproject's ``[tool.flwr.app.config]`` body: every run-config option with its default (``""`` for a
    local-training option left to the recipe; a required one gets its declared example)."""
    lines = []
    for f, opt, _ in opts.options(cls):
        if not opt.run_config:
            continue
        default = opts.default_of(f)
        if default is dataclasses.MISSING:
            default = opt.example
        if opts.recipe_field(f, opt):
            default = opts.UNSET
        if opt.rounds:
            default = ",".join(str(r) for r in default)
        lines.append(f"{f.name.replace('_', '-')} = {_toml(default)}")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def blocks() -> dict[str, str]:
    """{block name: generated text} for the README."""
    from fedw2v.config.decode import DecodeConfig
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.config.train import TrainConfig, TrainRunConfig
    from fedw2v.lm.build import LmBuildConfig

    return {
        "simulate-options": options_table(SimulateConfig),
        "train-options": options_table(TrainRunConfig) + "\n" + options_table(TrainConfig).split("\n", 2)[2],
        "recipes": recipes_table(),
        "decode-options": options_table(DecodeConfig),
        "lm-build-options": options_table(LmBuildConfig),
    }


def replace_blocks(text: str, generated: dict[str, str], open_: str, close: str) -> tuple[str, list[str]]:
    """``text`` with every named block replaced; also the names whose content changed. A block missing from
    ``text`` is an error naming it."""
    changed = []
    for name, body in generated.items():
        pattern = re.compile(re.escape(open_.format(name)) + r"[^\n]*\n(.*?)" + re.escape(close.format(name)), re.S)
        match = pattern.search(text)
        if match is None:
            raise ValueError(f"no generated block {name!r} ({open_.format(name)} ... {close.format(name)})")
        if match.group(1) != body + "\n":
            changed.append(name)
        text = text[: match.start(1)] + body + "\n" + text[match.end(1):]
    return text, changed


def update(root: Path, write: bool) -> list[str]:
    """Regenerate README.md and pyproject.toml under ``root``; returns the stale blocks (written if ``write``)."""
    from fedw2v.config.simulate import SimulateConfig

    stale = []
    targets = [
        (root / "README.md", blocks(), "<!-- generated:{} -->", "<!-- /generated:{} -->"),
        (root / "pyproject.toml", {"flwr-run-config": run_config_toml(SimulateConfig)}, "# generated:{}",
         "# /generated:{}"),
    ]
    for path, generated, open_, close in targets:
        text, changed = replace_blocks(path.read_text(), generated, open_, close)
        stale += [f"{path.name}:{name}" for name in changed]
        if write and changed:
            path.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(__file__).resolve().parents[2]
    stale = update(root, write="--check" not in argv)
    if stale and "--check" in argv:
        print(f"stale generated docs: {', '.join(stale)} (run: python -m fedw2v.config.docs)", file=sys.stderr)
        return 1
    print(f"updated: {', '.join(stale)}" if stale else "generated docs are up to date")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
