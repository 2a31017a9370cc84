"""The command line: help for every command without heavy imports, error mapping, exit codes, prepare."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedw2v import errors, manifest
from fedw2v.cli import app
from tests.tedlium_factory import add_talk

runner = CliRunner()
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)
HEAVY = ("torch", "transformers", "flwr", "ray", "pyarrow", "numpy", "pandas", "librosa", "soundfile", "matplotlib")


def test_every_stage_command_is_registered():
    assert {"prepare", "synth"} <= set(COMMANDS)


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_works_without_importing_heavy_libraries(args):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fedw2v.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"`fedw2v {' '.join(args)}` imported {out.stdout.strip()}"


def test_console_script_help_and_version():
    exe = __import__("pathlib").Path(sys.executable).with_name("fedw2v")  # `make test` does not activate .venv
    assert exe.is_file(), "the fedw2v console script is installed by `make install`"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "prepare" in out.stdout
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip().startswith("fedw2v ")


def test_no_arguments_shows_usage():
    r = runner.invoke(app, [])
    assert r.exit_code in (0, 2) and "Usage" in r.output


def test_unknown_option_is_a_usage_error():
    r = runner.invoke(app, ["prepare", "--bogus"])
    assert r.exit_code == 2


@pytest.mark.parametrize(
    "exc, code, line",
    [
        (errors.InputError("a.wav: not found", hint="check the path"), 2, "error: a.wav: not found (check the path)"),
        (errors.UsageError("bad --x"), 2, "error: bad --x"),
        (errors.ManifestError("m.parquet: column 'x' is missing"), 2, "error: m.parquet: column 'x' is missing"),
        (errors.EnvironmentProblem("no synthesiser"), 3, "error: no synthesiser"),
        (RuntimeError("boom\nsecond line"), 1, "internal error: RuntimeError: boom (rerun with --debug"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_error_mapping_is_one_line_with_a_code(exc, code, line):
    assert errors.exit_code_for(exc) == code
    text = errors.format_error(exc)
    assert text.startswith(line) and "\n" not in text


# ---------------------------------------------------------------- prepare through the CLI


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "corpus"
    add_talk(root, "train", "Ann_2010A", ["Ann_2010A 1 Ann_2010A 0.00 1.00 <o,f0,female> it 's fine",
                                          "Ann_2010A 1 Ann_2010A 1.00 9.00 <o,f0,female> past the end"], 2.0)
    add_talk(root, "dev", "Bo_2011B", ["Bo_2011B 1 Bo_2011B 0.00 1.00 <o,f0,male> hello [bracket]"], 2.0)
    add_talk(root, "test", "Cy_2012C", ["Cy_2012C 1 Cy_2012C 0.00 1.00 <NA> bye"], 2.0)
    return root


def test_prepare_writes_the_manifest_and_prints_the_summary(corpus, tmp_path):
    out = tmp_path / "m.parquet"
    r = runner.invoke(app, ["prepare", str(corpus), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "fedw2v prepare" in r.output and "past-audio-end 1" in r.output
    assert "legacy/train/stm/Ann_2010A.stm:2: past-audio-end" in r.output
    m = manifest.read(out)
    assert m.num_rows == 3
    assert m.info.corpus_root == str(corpus.resolve())
    assert m.info.command.startswith("fedw2v prepare ") and "--normalization paper" in m.info.command
    assert m.info.extra == {"distribution": "legacy"}


def test_prepare_strict_fails_and_writes_nothing(corpus, tmp_path):
    out = tmp_path / "m.parquet"
    r = runner.invoke(app, ["prepare", str(corpus), "-o", str(out), "--strict"])
    assert r.exit_code == 2
    assert "error: 1 problems with --strict" in r.output and "nothing written" in r.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--distribution", "speaker-adaptation"], "distribution 'speaker-adaptation' not found"),
        (["--distribution", "other"], "distribution must be one of"),
        (["--splits", "train,eval"], "splits must be"),
        (["--normalization", "kaldi"], "normalization must be"),
    ],
)
def test_prepare_bad_options_are_one_line_errors(corpus, tmp_path, args, message):
    out = tmp_path / "m.parquet"
    r = runner.invoke(app, ["prepare", str(corpus), "-o", str(out), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_prepare_missing_corpus(tmp_path):
    r = runner.invoke(app, ["prepare", str(tmp_path / "none"), "-o", str(tmp_path / "m.parquet")])
    assert r.exit_code == 2 and "corpus directory not found" in r.output


@pytest.mark.parametrize("how", ["--debug", "FEDW2V_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path, how):
    """`--debug` (or FEDW2V_DEBUG=1) prints the traceback instead of the one line; without it, the one line."""
    import os
    from pathlib import Path

    exe = str(Path(sys.executable).with_name("fedw2v"))
    plain = [exe, "prepare", str(tmp_path / "none"), "-o", str(tmp_path / "m.parquet")]
    env = {k: v for k, v in os.environ.items() if k != "FEDW2V_DEBUG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    debug_env = {**env, "FEDW2V_DEBUG": "1"} if how != "--debug" else env
    args = [exe, "--debug", *plain[1:]] if how == "--debug" else plain
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=debug_env)
    assert out.returncode != 0
    assert "Traceback (most recent call last)" in out.stderr
    assert "fedw2v.errors.CorpusError: " in out.stderr and "corpus directory not found" in out.stderr
    quiet = subprocess.run(plain, capture_output=True, text=True, timeout=60, env=env)
    assert quiet.returncode == 2 and "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none'}: corpus directory not found (pass the TEDLIUM_release-3 directory)"]


def test_prepare_with_no_utterances_writes_nothing(tmp_path):
    root = tmp_path / "c"
    add_talk(root, "dev", "E_2010E", ["E_2010E 1 E_2010E 0 1 <NA> <unk>"], 2.0)
    out = tmp_path / "m.parquet"
    r = runner.invoke(app, ["prepare", str(root), "-o", str(out)])
    assert r.exit_code == 2 and "no utterances found" in r.output
    assert not out.exists()
