"""The shape of fedw2v/privacy: `fl` and the privacy code depend on each other in one direction only (the server
calls the online hook; nothing in privacy imports `fl`), the statistics run without torch, and the modules stay
small (no module over 600 lines, no function over 60)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import fedw2v

PACKAGE = Path(fedw2v.__file__).parent
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module that ``module``'s ``source`` imports, at any depth (functions included), as absolute dotted
    names; ``from a import b`` counts as ``a.b`` too (b may be a module)."""
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def _imports(path: Path) -> set[str]:
    return imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py")


def _modules(folder: str) -> list[Path]:
    found = sorted((PACKAGE / folder).rglob("*.py"))
    assert found, folder
    return found


def test_the_import_parser_sees_every_form():
    src = ("import fedw2v.fl.sampling\nfrom fedw2v import fl\n\ndef f():\n    from fedw2v.fl.records import x\n"
           "    from ..fl import server_app\n    from . import store\n")
    got = imported_modules(src, "fedw2v.privacy.attack")
    assert {"fedw2v.fl.sampling", "fedw2v.fl", "fedw2v.fl.records", "fedw2v.fl.server_app",
            "fedw2v.privacy.store"} <= got
    assert "fedw2v.fl.x" in imported_modules("from .fl import x\n", "fedw2v", is_package=True)


def test_privacy_never_imports_fl():
    for path in _modules("privacy"):
        bad = sorted(m for m in _imports(path) if m == "fedw2v.fl" or m.startswith("fedw2v.fl."))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


HOOKS = {"fedw2v.privacy.online", "fedw2v.privacy.online.OnlineFootprints",  # the server's footprint hook
         "fedw2v.privacy.dp", "fedw2v.privacy.dp.DpServer",  # the server's DP hook
         "fedw2v.privacy.dp_client", "fedw2v.privacy.dp_client.privacy_mod"}  # the ClientApp's DP mod


def test_fl_calls_only_the_hooks_of_privacy():
    used = set()
    for path in _modules("fl"):
        mods = {m for m in _imports(path) if m.startswith("fedw2v.privacy")}
        assert mods <= HOOKS, (path.name, mods)
        used |= mods
    assert used == HOOKS  # the server and the client do call them
    assert not (PACKAGE / "footprint.py").exists()  # the old module is gone, no shim left


def test_the_statistics_import_and_run_without_torch():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from fedw2v.privacy import stats\n"
        "rng = np.random.default_rng(0)\n"
        "e = {c: rng.normal(size=(2, 8)) for c in range(4)}\n"
        "t = {c: v + 0.1 * rng.normal(size=v.shape) for c, v in e.items()}\n"
        "res = stats.layer_eer([stats.make_trials(e, t)], resamples=20)\n"
        "assert res.measurable, res\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'flwr', 'ray'))\n"
        "print('heavy:', heavy)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "heavy: []", out.stdout


def test_privacy_modules_and_functions_stay_small():
    for path in _modules("privacy"):
        src = path.read_text()
        assert len(src.splitlines()) <= 600, path.name
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}: {node.name}"
