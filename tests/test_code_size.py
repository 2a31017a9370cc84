"""The project's size rule: no module in fedw2v/ over 600 lines and no function over 60 (split along real seams).

Places that break it while being split elsewhere are listed below (none today); remove an entry when its split
lands, so that it cannot grow back. A function's length runs from its first decorator to its last line. And the
README's "Development" section names every module, so the layout it shows cannot go stale.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

MODULE_LINES = 600
FUNCTION_LINES = 60
PACKAGE = Path(__file__).resolve().parents[1] / "fedw2v"

# Known offenders, each being split by another change (path relative to fedw2v/; "*": every function).
MODULES_OVER: set[str] = set()
FUNCTIONS_OVER: set[tuple[str, str]] = set()
CLI_LINES = 500  # the CLI only parses, builds the config, calls the stage and renders


def _sizes() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    modules, functions = {}, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        source = path.read_text(encoding="utf-8")
        modules[rel] = source.count("\n")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                functions[(rel, node.name)] = max(functions.get((rel, node.name), 0), node.end_lineno - start + 1)
    return modules, functions


def test_no_module_over_600_lines():
    modules, _ = _sizes()
    assert "cli.py" in modules and len(modules) > 20  # it reads the package
    over = {rel: n for rel, n in modules.items() if n > MODULE_LINES and rel not in MODULES_OVER}
    assert over == {}


def test_the_cli_stays_thin():
    modules, _ = _sizes()
    assert modules["cli.py"] <= CLI_LINES


def test_no_function_over_60_lines():
    _, functions = _sizes()
    over = {
        f"{rel}:{name}": n
        for (rel, name), n in functions.items()
        if n > FUNCTION_LINES and (rel, name) not in FUNCTIONS_OVER and (rel, "*") not in FUNCTIONS_OVER
    }
    assert over == {}


def test_the_readme_layout_names_every_module():
    """A module is named by its path (`fl/sampling.py`), or on its package's own line (`partition/   … lists …`)."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Development"):]
    layout = section[section.index("```"):section.index("```", section.index("```") + 3)]
    blocks = re.split(r"\n  (?=\S)", layout)  # one entry per top-level line (continuation lines belong to it)
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if path.name == "__init__.py":
            continue
        package = rel.rsplit("/", 1)[0] + "/" if "/" in rel else None
        named = rel in layout or (package is not None and any(
            re.match(rf"{re.escape(package)}\s", b) and re.search(rf"\b{re.escape(path.stem)}\b", b) for b in blocks))
        if not named:
            missing.append(rel)
    assert missing == []
