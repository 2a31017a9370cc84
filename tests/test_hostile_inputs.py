"""Hostile and careless input (issue 11): no code from a model directory runs, no special file is replaced, a
manifest cannot point outside its corpus, and every mistake a user can make is one line with exit code 2.

Each case is tried the way a user meets it: through the `fedw2v` command (in process with CliRunner where the
exit code and output are enough; as a subprocess where stdin, signals, pipes or tracebacks matter).
Manifest validation is also fuzzed with hypothesis: whatever a Parquet file holds, `manifest.read` returns a
valid manifest or raises an InputError, never another exception.
"""

from __future__ import annotations

import dataclasses

import json
import math
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from fedw2v import manifest
from fedw2v.atomic import atomic_file, check_target, replace_directory
from fedw2v.cli import app
from fedw2v.errors import InputError, ManifestError
from tests.tedlium_factory import add_talk

runner = CliRunner()
EXE = str(Path(sys.executable).with_name("fedw2v"))
ROOT = Path(__file__).resolve().parent.parent


def _env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), HF_HOME=str(tmp_path / "hf"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COLUMNS="200", FEDW2V_RUNS=str(tmp_path / "runs"))
    env.pop("FEDW2V_DEBUG", None)
    env.update(extra)
    return env


def _one_line_error(result, code: int = 2) -> str:
    """The result failed with ``code`` and printed exactly one line, an error without a traceback or usage box."""
    out = result.output.strip()
    assert result.exit_code == code, result.output
    assert "\n" not in out and out.startswith("error: "), out
    assert "Traceback" not in out and "internal error" not in out and "╭" not in out
    return out


@pytest.fixture()
def wav(tmp_path) -> Path:
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(16_000, np.float32), 16_000)
    return path


@pytest.fixture()
def corpus_manifest(tmp_path) -> Path:
    """A TED-LIUM-layout corpus of silent talks (no synthesiser needed), prepared through the CLI."""
    root = tmp_path / "corpus"
    add_talk(root, "train", "Ann_2010A", ["Ann_2010A 1 Ann_2010A 0.00 1.00 <o,f0,female> hello there",
                                          "Ann_2010A 1 Ann_2010A 1.00 2.00 <o,f0,female> good day"], 2.5)
    add_talk(root, "dev", "Bo_2011B", ["Bo_2011B 1 Bo_2011B 0.00 1.00 <o,f0,male> hello"], 1.5)
    add_talk(root, "test", "Cy_2012C", ["Cy_2012C 1 Cy_2012C 0.00 1.00 <o,f0,male> bye now"], 1.5)
    out = tmp_path / "m.parquet"
    r = runner.invoke(app, ["prepare", str(root), "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def _rewrite(src: Path, dst: Path, column: str | None = None, row: int = 0, value=None, meta: bytes | None = None):
    """A copy of manifest ``src`` with one cell replaced and/or the fedw2v metadata replaced by raw bytes."""
    table = pq.read_table(src)
    if column is not None:
        values = table.column(column).to_pylist()
        values[row] = value
        i = table.schema.get_field_index(column)
        table = table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))
    if meta is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), manifest.METADATA_KEY: meta})
    pq.write_table(table, dst)
    return dst


# ---------------------------------------------------------------- security: no code from a model directory


def _custom_code_model(directory: Path, marker: Path, where: str = "config.json") -> Path:
    """A model directory whose config (or tokenizer config) names Python code of its own, which would create
    ``marker`` if it were ever imported."""
    directory.mkdir(parents=True)
    (directory / "evil_code.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('the custom code ran')\n"
        "from transformers import Wav2Vec2Config\n\n"
        "class EvilConfig(Wav2Vec2Config):\n    model_type = 'evil-w2v'\n"
    )
    config = {"model_type": "wav2vec2", "architectures": ["Wav2Vec2ForCTC"]}
    auto_map = {"AutoConfig": "evil_code.EvilConfig", "AutoModelForCTC": "evil_code.EvilConfig"}
    if where == "config.json":
        config.update(model_type="evil-w2v", auto_map=auto_map)
    else:
        (directory / where).write_text(json.dumps({"auto_map": {"AutoTokenizer": ["evil_code.EvilConfig", None]}}))
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_a_model_directory_with_custom_code_is_refused_and_its_code_never_runs(tmp_path, wav, corpus_manifest):
    """transformers would ask on stdout "Do you wish to run the custom code? [y/N]" and run it on `y`."""
    marker = tmp_path / "MARKER"
    model = _custom_code_model(tmp_path / "evil", marker)
    answers = tmp_path / "answers.txt"
    answers.write_text("y\n" * 10)
    for args in (["transcribe", str(wav), "--model", str(model), "--format", "json"],
                 ["evaluate", str(model), "--manifest", str(corpus_manifest), "--json"]):
        with open(answers, "rb") as stdin:
            out = subprocess.run([EXE, *args], stdin=stdin, capture_output=True, text=True, timeout=120,
                                 env=_env(tmp_path))
            consumed = os.lseek(stdin.fileno(), 0, os.SEEK_CUR)
        assert out.returncode == 2, out.stderr
        assert out.stdout == ""  # no question, nothing else: --json output stays clean
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "'auto_map'" in lines[0] and "config.json" in lines[0], out.stderr
        assert consumed == 0, "stdin was read"
        assert not marker.exists(), "the model directory's code ran"


def test_custom_code_named_by_a_tokenizer_config_is_refused_too(tmp_path):
    from fedw2v.model import load_model

    marker = tmp_path / "MARKER"
    model = _custom_code_model(tmp_path / "evil", marker, where="tokenizer_config.json")
    with pytest.raises(InputError, match=r"tokenizer_config.json: has 'auto_map'"):
        load_model(str(model))
    assert not marker.exists()


def test_every_transformers_load_passes_trust_remote_code_false():
    """Every `from_pretrained(...)` and `pipeline(...)` call in the package, scripts, benchmarks and tests says
    trust_remote_code=False (transformers would otherwise decide, and may ask on stdin)."""
    import ast

    files = [p for d in ("fedw2v", "scripts", "benchmarks", "tests", "examples") for p in (ROOT / d).rglob("*.py")]
    calls = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("from_pretrained", "pipeline"):
                trusted = [k for k in node.keywords if k.arg == "trust_remote_code"]
                value = trusted[0].value if len(trusted) == 1 else None
                ok = isinstance(value, ast.Constant) and value.value is False
                calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", ok))
    assert len(calls) >= 4, calls  # the model, tokenizer and feature-extractor loads, the pipeline checks
    assert [where for where, ok in calls if not ok] == []


def _tiny_dir(tmp_path: Path) -> Path:
    from fedw2v.model import load_model, save_model

    loaded = load_model("tiny", seed=0)
    return save_model(loaded.model, loaded.processor, tmp_path / "tiny")


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["garbage", "code"])
def test_allow_pickle_with_a_pickle_that_fails_to_load_is_one_line(tmp_path, wav, kind):
    import pickle

    model = _tiny_dir(tmp_path)
    (model / "model.safetensors").unlink()
    marker = tmp_path / "PICKLE_RAN"
    payload = b"this is not a pickle" if kind == "garbage" else pickle.dumps(_RunsCode(marker))
    (model / "pytorch_model.bin").write_bytes(payload)
    r = runner.invoke(app, ["transcribe", str(wav), "--model", str(model), "--allow-pickle"])
    line = _one_line_error(r)
    assert "cannot load the model weights" in line and str(model) in line
    assert not marker.exists()


def test_a_damaged_safetensors_file_is_one_line(tmp_path, wav):
    model = _tiny_dir(tmp_path)
    (model / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    line = _one_line_error(runner.invoke(app, ["transcribe", str(wav), "--model", str(model)]))
    assert "cannot load the model weights (SafetensorError" in line


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is JSON but not an object"), ("{nope", "not readable JSON"), ('{"hidden_size": 4}', "no model_type"),
])
def test_a_broken_model_config_is_one_line(tmp_path, wav, content, message):
    model = _tiny_dir(tmp_path)
    (model / "config.json").write_text(content)
    assert message in _one_line_error(runner.invoke(app, ["transcribe", str(wav), "--model", str(model)]))


# ---------------------------------------------------------------- security: outputs never replace special files


@pytest.fixture()
def specials():
    """A FIFO and a Unix socket in a short temporary directory (socket paths are limited to ~100 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="fedw2v-"))
    os.mkfifo(d / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock"))
    try:
        yield d
    finally:
        sock.close()
        shutil.rmtree(d, ignore_errors=True)


def _output_cases(tmp_path: Path, manifest_path: Path, wav: Path, target: str) -> list[list[str]]:
    """Every command and option that writes, with ``target`` as what it writes."""
    m, run = str(manifest_path), str(tmp_path / "run")
    return [
        ["prepare", str(tmp_path / "corpus"), "-o", target],
        ["partition", m, "-o", target],
        ["partition", m, "-o", str(tmp_path / "p.parquet"), "--plot", target],
        ["evaluate", "tiny", "--manifest", m, "--out", target],
        ["evaluate", run, "--participation", "--plot", target],
        ["footprint", run, "--plot", target],
        ["transcribe", str(wav), "--model", "tiny", "--out", target],
        ["train", m, "--model", "tiny", "--out", target],
        ["simulate", m, "--model", "tiny", "--run-dir", target],
    ]


@pytest.mark.parametrize("name", ["fifo", "sock", "empty", "under-a-file"])
def test_no_command_writes_over_a_special_file_an_empty_path_or_under_a_file(tmp_path, corpus_manifest, wav,
                                                                           specials, name):
    target = {"fifo": str(specials / "fifo"), "sock": str(specials / "sock"), "empty": "",
              "under-a-file": str(corpus_manifest / "x")}[name]
    for args in _output_cases(tmp_path, corpus_manifest, wav, target):
        r = runner.invoke(app, args)
        line = _one_line_error(r)
        assert "model:" not in r.output  # refused before any work
        reason = {"fifo": "is a FIFO", "sock": "is a socket", "empty": "an empty path",
                  "under-a-file": f"{corpus_manifest} is a file, not a directory"}[name]
        assert reason in line, (args, line)
    assert stat.S_ISFIFO((specials / "fifo").stat().st_mode) and stat.S_ISSOCK((specials / "sock").stat().st_mode)
    assert corpus_manifest.is_file()


def test_a_file_where_a_directory_goes_and_a_directory_where_a_file_goes_are_refused(tmp_path, corpus_manifest, wav):
    m = str(corpus_manifest)
    for args, reason in [
        (["evaluate", "tiny", "--manifest", m, "--out", str(tmp_path)], "is a directory"),
        (["partition", m, "-o", str(tmp_path)], "is a directory"),
        (["transcribe", str(wav), "--model", "tiny", "--out", m], "is a file, not a directory"),
        (["train", m, "--model", "tiny", "--out", m], "is a file, not a directory"),
    ]:
        r = runner.invoke(app, args)
        assert reason in _one_line_error(r) and "model:" not in r.output  # before loading or decoding anything


def test_the_writers_themselves_refuse_special_files(specials, tmp_path):
    """The guard inside atomic_file / replace_directory (every write goes through them), beside the options'."""
    fifo = specials / "fifo"
    with pytest.raises(InputError, match="is a FIFO, not a regular file; refusing to replace it"):
        with atomic_file(fifo) as tmp:
            tmp.write_text("x")
    new = tmp_path / "new"
    new.mkdir()
    with pytest.raises(InputError, match="is a FIFO, not a directory"):
        replace_directory(new, fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode) and new.is_dir()
    assert not [p for p in specials.iterdir() if p.name.endswith(".tmp")]
    # a character device is only looked at (stat), never opened
    with pytest.raises(InputError, match="is a character device"):
        check_target("/dev/null")
    assert check_target(tmp_path / "a" / "b.parquet") == tmp_path / "a" / "b.parquet"  # nothing there yet: fine


# ---------------------------------------------------------------- security: audio stays inside the corpus root


@pytest.mark.parametrize("audio_path", ["../../../../etc/passwd", "/etc/passwd", "legacy/../../outside.sph"])
def test_a_manifest_pointing_outside_its_corpus_is_refused_naming_the_utterance(tmp_path, corpus_manifest,
                                                                               audio_path):
    bad = _rewrite(corpus_manifest, tmp_path / "bad.parquet", "audio_path", 0, audio_path)
    utt = pq.read_table(bad).column("utt_id")[0].as_py()
    with pytest.raises(ManifestError, match=f"utterance '{utt}' has audio_path .* leaves the corpus root"):
        manifest.read(bad)
    assert manifest.read(bad, allow_outside_audio=True).num_rows == 4
    for args in (["partition", str(bad), "-o", str(tmp_path / "p.parquet")],
                 ["evaluate", "tiny", "--manifest", str(bad), "--split", "train"],
                 ["train", str(bad), "--model", "tiny", "--out", str(tmp_path / "run")]):
        line = _one_line_error(runner.invoke(app, args))
        assert utt in line and "--allow-outside-audio" in line


def test_allow_outside_audio_reads_audio_outside_the_corpus(tmp_path, corpus_manifest):
    table = pq.read_table(corpus_manifest)
    row = table.column("split").to_pylist().index("test")
    root = Path(manifest.read(corpus_manifest).info.corpus_root)
    outside = tmp_path / "elsewhere" / "talk.sph"
    outside.parent.mkdir()
    shutil.copy(root / table.column("audio_path")[row].as_py(), outside)
    moved = _rewrite(corpus_manifest, tmp_path / "moved.parquet", "audio_path", row, str(outside))
    args = ["evaluate", "tiny", "--manifest", str(moved), "--json"]
    assert "leaves the corpus root" in _one_line_error(runner.invoke(app, args))
    r = runner.invoke(app, [*args, "--allow-outside-audio"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["utterances"] == 1


def test_simulate_carries_allow_outside_audio_to_the_server_and_every_client(tmp_path, corpus_manifest):
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.fl.client_app import TrainJob
    from fedw2v.fl.server_app import Server

    bad = _rewrite(corpus_manifest, tmp_path / "bad.parquet", "audio_path", 0, "/etc/passwd")
    config = SimulateConfig(clients_manifest=str(bad), run_dir=str(tmp_path / "run"), model="tiny")
    with pytest.raises(ManifestError, match="leaves the corpus root"):
        Server(None, config)
    job = TrainJob(1, 2, str(bad), "", "base", {}, 0, allow_outside_audio=True)
    assert TrainJob.from_record(job.to_record()) == job
    assert TrainJob.from_record(TrainJob(1, 2, str(bad), "", "base", {}, 0).to_record()).allow_outside_audio is False
    assert SimulateConfig(clients_manifest="c", run_dir="r", allow_outside_audio=True).to_run_config()[
        "allow-outside-audio"] is True


def test_the_footprint_indicator_honours_the_runs_allow_outside_audio(tmp_path, corpus_manifest):
    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.privacy.indicator import run_indicator

    bad = _rewrite(corpus_manifest, tmp_path / "bad.parquet", "audio_path", 0, "/etc/passwd")
    config = SimulateConfig(clients_manifest=str(bad), run_dir=str(tmp_path / "run"), model="tiny")
    with pytest.raises(ManifestError, match="leaves the corpus root"):
        run_indicator(config)
    outside = run_indicator(dataclasses.replace(config, allow_outside_audio=True))
    assert outside.available >= 0  # read, not refused


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("column", ["start", "end", "duration"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_times_are_refused_naming_the_utterance(tmp_path, corpus_manifest, column, value):
    bad = _rewrite(corpus_manifest, tmp_path / "bad.parquet", column, 1, value)
    utt = pq.read_table(bad).column("utt_id")[1].as_py()
    with pytest.raises(ManifestError, match=f"utterance '{utt}' has {column}=-?(nan|inf)"):
        manifest.read(bad)
    info = manifest.read(corpus_manifest).info
    with pytest.raises(ManifestError, match=utt):
        manifest.write(manifest.Manifest(pq.read_table(bad), info), tmp_path / "w.parquet")
    out = tmp_path / "p.parquet"
    assert utt in _one_line_error(runner.invoke(app, ["partition", str(bad), "-o", str(out)]))
    assert not out.exists()  # partition no longer writes such rows


@pytest.mark.parametrize("raw, message", [
    (b"null", "is JSON but not an object (NoneType)"),
    (b"[1, 2]", "is JSON but not an object (list)"),
    (b'"text"', "is JSON but not an object (str)"),
    (b"\xff\xfe\x00", "is not valid JSON"),
])
def test_metadata_that_is_not_a_json_object_is_one_line(tmp_path, corpus_manifest, raw, message):
    bad = _rewrite(corpus_manifest, tmp_path / "bad.parquet", meta=raw)
    line = _one_line_error(runner.invoke(app, ["partition", str(bad), "-o", str(tmp_path / "p.parquet")]))
    assert message in line


@pytest.mark.parametrize("key, value, message", [
    ("corpus_root", 5, "corpus_root=5"), ("corpus_root", None, "corpus_root=None"),
    ("corpus_root", ["/a"], "corpus_root=['/a']"), ("normalization", "kaldi", "normalization='kaldi'"),
    ("extra", [1], "extra=[1]"), ("seed", "7", "seed='7'"), ("command", 3, "command=3"),
])
def test_mistyped_metadata_is_one_line(tmp_path, corpus_manifest, key, value, message):
    meta = json.loads(pq.read_schema(corpus_manifest).metadata[manifest.METADATA_KEY])
    bad = _rewrite(corpus_manifest, tmp_path / "bad.parquet", meta=json.dumps({**meta, key: value}).encode())
    assert message in _one_line_error(runner.invoke(app, ["evaluate", "tiny", "--manifest", str(bad)]))


@pytest.mark.parametrize("args", [
    ["evaluate", "tiny", "--manifest", "{m}", "--device", "foo"],
    ["evaluate", "{run}", "--participation", "--device", "foo"],
    ["transcribe", "{wav}", "--model", "tiny", "--device", "foo"],
    ["train", "{m}", "--model", "tiny", "--out", "{run}", "--device", "foo"],
    ["footprint", "{run}", "--device", "foo"],
])
def test_an_unknown_device_is_one_line_everywhere(tmp_path, corpus_manifest, wav, args):
    values = {"m": str(corpus_manifest), "run": str(tmp_path / "run"), "wav": str(wav)}
    r = runner.invoke(app, [a.format(**values) for a in args])
    line = _one_line_error(r)
    assert "device must be one of auto, cpu, cuda" in line and "model:" not in r.output


@pytest.mark.parametrize("args, message", [
    (["simulate", "{m}", "--run-dir", "{run}", "--rounds", "abc"], "Invalid value for '--rounds': 'abc' is not a "
                                                                     "valid integer (see `fedw2v simulate --help`)"),
    (["partition", "{m}"], "Missing option '--output' / '-o'"),
    (["prepare", "--bogus"], "No such option"),
    (["--bogus"], "No such option '--bogus' (see `fedw2v --help`)"),
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["transcribe", "--model", "tiny"], "Missing argument 'AUDIO...'"),
    (["footprint", "{run}", "--bootstrap", "1.5"], "'1.5' is not a valid integer"),
])
def test_what_click_refuses_is_one_line_too(tmp_path, corpus_manifest, args, message):
    values = {"m": str(corpus_manifest), "run": str(tmp_path / "run")}
    assert message in _one_line_error(runner.invoke(app, [a.format(**values) for a in args]))


@pytest.mark.parametrize("args, message", [
    (["simulate", "{m}", "--run-dir", "{run}", "--round-timeout", "inf"], "must be finite"),
    (["simulate", "{m}", "--run-dir", "{run}", "--lr-head", "nan"], "must be finite"),
    (["train", "{m}", "--out", "{run}", "--model", "tiny", "--lr-encoder", "inf"], "must be finite"),
])
def test_non_finite_option_values_are_one_line(tmp_path, corpus_manifest, args, message):
    values = {"m": str(corpus_manifest), "run": str(tmp_path / "run")}
    assert message in _one_line_error(runner.invoke(app, [a.format(**values) for a in args]))


def test_a_damaged_run_directory_is_one_line(tmp_path, wav):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "LATEST").write_bytes(b"\x00\xff..")
    assert "not a model directory" in _one_line_error(runner.invoke(app, ["transcribe", str(wav), "--model", str(run)]))
    (run / "config.json").write_text("[1]")
    assert "config.json" in _one_line_error(runner.invoke(app, ["footprint", str(run)]))


def test_a_sphere_header_with_an_infinite_sample_rate_is_a_skipped_segment(tmp_path):
    root = tmp_path / "corpus"
    add_talk(root, "train", "A_2010A", ["A_2010A 1 A_2010A 0.0 1.0 <NA> hello there"], 2.0)
    add_talk(root, "train", "B_2010B", ["B_2010B 1 B_2010B 0.0 1.0 <NA> hello"], 2.0)
    sph = root / "data" / "sph" / "A_2010A.sph"
    data = sph.read_bytes()
    sph.write_bytes(data.replace(b"sample_rate -i 16000", b"sample_rate -r inf  "))
    r = runner.invoke(app, ["prepare", str(root), "-o", str(tmp_path / "m.parquet"), "--splits", "train"])
    assert r.exit_code == 0, r.output
    assert "unreadable-audio" in r.output and "SPHERE header field is not a number" in r.output


# ---------------------------------------------------------------- interruption, pipes, --debug (real processes)


def test_ctrl_c_prints_interrupted_and_exits_130(tmp_path):
    if not (shutil.which("flite") or shutil.which("espeak-ng")):
        pytest.skip("needs flite or espeak-ng")
    # short talks: synth finishes the talks it is synthesising before it stops (about a talk's time)
    # (60 minutes: on a quiet machine 10 took 3 s, and synth had ended before the signal)
    # preexec_fn: Ctrl-C at its default, as a terminal starts a command; a suite run as a background job of a
    # non-interactive shell (`make test &`) inherits SIGINT ignored, and so would synth (it then ran to the end)
    proc = subprocess.Popen([EXE, "synth", str(tmp_path / "c"), "--speakers", "30", "--minutes", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(4)  # well into synthesis
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground process group
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1:] == ["interrupted"], err
    assert "Traceback" not in err
    assert not (tmp_path / "c").exists()  # nothing half-written


def test_a_closed_stdout_pipe_ends_quietly(tmp_path, wav):
    """`fedw2v transcribe … | head -0`: the reader is gone before the first line is written."""
    proc = subprocess.Popen([EXE, "transcribe", str(wav), str(wav), "--model", "tiny"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    proc.stdout.close()
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 1, err
    assert "BrokenPipe" not in err and "internal error" not in err and "Exception ignored" not in err, err


# ---------------------------------------------------------------- fuzzing manifest validation (hypothesis)


def _fuzz_strategies():
    from hypothesis import strategies as st

    # allow_subnormal=False: the training tests flush denormals for the whole process (torch.set_flush_denormal)
    numbers = st.one_of(st.floats(allow_subnormal=False), st.sampled_from([0.0, -1.0, 1.0, 2.5]))
    text = st.one_of(st.sampled_from(["train", "dev", "test", "holdout", "male", "female", "unknown", "a/b.sph",
                                      "../x.sph", "/abs.sph", "", "x"]), st.text(max_size=8))
    ints = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, 1, 16000]))
    kinds = {"string": (pa.string(), text), "double": (pa.float64(), numbers), "int32": (pa.int32(), ints),
             "int64": (pa.int64(), ints), "float32": (pa.float32(), numbers), "bool": (pa.bool_(), st.booleans())}

    @st.composite
    def tables(draw):
        n = draw(st.integers(0, 4))
        names = [c for c, *_ in manifest.COLUMNS]
        chosen = draw(st.lists(st.sampled_from(names + ["extra", "utt_id"]), max_size=18))
        if draw(st.booleans()):
            chosen = names + draw(st.lists(st.sampled_from(names), max_size=2))  # the full schema, maybe doubled
        arrays, fields = [], []
        for name in chosen:
            declared = next((t for c, t, *_ in manifest.COLUMNS if c == name), "string")
            kind = declared if draw(st.integers(0, 4)) else draw(st.sampled_from(sorted(kinds)))
            typ, values = kinds[kind]
            column = [None if draw(st.integers(0, 9)) == 0 else draw(values) for _ in range(n)]
            if name == "utt_id" and draw(st.booleans()):
                column = [f"u{i}" for i in range(n)]
            try:
                arrays.append(pa.array(column, typ))
            except (pa.ArrowException, OverflowError, TypeError, ValueError):  # e.g. 1e308 as float32
                arrays.append(pa.nulls(n, typ))
            fields.append(pa.field(name, typ))
        if not fields:
            return pa.table({"x": pa.array([], pa.int8())})
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields))

    hostile = {"double": st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, -0.0, 1e308, 5e-324]),
               "int32": st.sampled_from([-1, 0, 2**31 - 1, -(2**31)]),
               "string": st.one_of(st.sampled_from(["", "../x.sph", "/abs.sph", "a/../../b", "train ", "TEST",
                                                    "x\x00y", "holdout"]), st.text(max_size=6))}

    @st.composite
    def mutated(draw):
        """A valid table with a few cells replaced by hostile values (NaN, infinities, negatives, odd strings)."""
        n = draw(st.integers(1, 4))
        rows = {"utt_id": [f"u{i}" for i in range(n)], "talk_id": ["t"] * n, "speaker": ["s"] * n,
                "gender": [draw(st.sampled_from(manifest.GENDERS)) for _ in range(n)],
                "split": [draw(st.sampled_from(manifest.SPLITS)) for _ in range(n)],
                "audio_path": ["sph/t.sph"] * n, "start": [float(i) for i in range(n)],
                "end": [i + 1.0 for i in range(n)], "duration": [1.0] * n, "sample_rate": [16000] * n,
                "num_channels": [1] * n, "text": ["hi"] * n, "text_raw": ["hi"] * n,
                "client_id": [draw(st.one_of(st.none(), st.integers(0, 3))) for _ in range(n)],
                "local_split": [draw(st.one_of(st.none(), st.sampled_from(manifest.LOCAL_SPLITS))) for _ in range(n)]}
        if draw(st.booleans()):  # paths inside and outside the corpus root
            rows["audio_path"][draw(st.integers(0, n - 1))] = draw(st.sampled_from(
                ["../x.sph", "/abs.sph", "a/../../b.sph", "a/./b.sph", "sub/../b.sph", "..sph", "x/.."]))
        for _ in range(draw(st.integers(0, 2))):
            name, kind, nullable, _ = draw(st.sampled_from(manifest.COLUMNS))
            rows[name][draw(st.integers(0, n - 1))] = draw(st.one_of(hostile[kind], st.none()) if nullable
                                                          else hostile[kind])
        try:
            return pa.Table.from_pydict(rows, schema=manifest.schema())
        except (pa.ArrowException, ValueError):  # a null in a non-nullable column: written without the schema
            return pa.table(rows)

    json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_subnormal=False),
                                         st.text(max_size=6)),
                               lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                               max_leaves=6)
    good = {"schema_version": 1, "corpus_root": "/data", "normalization": "paper", "command": "c"}
    metadata = st.one_of(
        st.none(), st.binary(max_size=12), json_values.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.sampled_from(sorted(good) + ["seed", "extra", "other"]), json_values, max_size=6)
        .map(lambda d: json.dumps({**good, **d}).encode()),
        st.just(json.dumps(good).encode()),
    )
    return st.one_of(tables(), mutated()), st.one_of(st.just(json.dumps(good).encode()), metadata)


def test_fuzzed_manifests_are_valid_or_a_one_line_input_error(tmp_path):
    from hypothesis import HealthCheck, given, settings

    tables, metadata = _fuzz_strategies()
    path = tmp_path / "fuzz.parquet"
    seen = {"valid": 0, "refused": 0}

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(table=tables, meta=metadata)
    def check(table, meta):
        if meta is not None:
            table = table.replace_schema_metadata({manifest.METADATA_KEY: meta})
        try:
            pq.write_table(table, path)
        except (pa.ArrowException, ValueError):
            return  # not even writable as Parquet
        try:
            m = manifest.read(path)
        except InputError as exc:
            assert "\n" not in str(exc)
            seen["refused"] += 1
            return
        seen["valid"] += 1
        info, t = m.info, m.table
        assert isinstance(info.corpus_root, str) and info.corpus_root and isinstance(info.command, str)
        assert info.normalization in ("paper", "joined") and isinstance(info.extra, dict)
        assert info.seed is None or (isinstance(info.seed, int) and not isinstance(info.seed, bool))
        assert t.schema.equals(manifest.schema())
        for name in ("start", "end", "duration"):
            assert all(math.isfinite(v) for v in t.column(name).to_pylist())
        assert all(0 <= s < e for s, e in zip(t.column("start").to_pylist(), t.column("end").to_pylist()))
        assert not any(manifest.outside_root(p) for p in t.column("audio_path").to_pylist())

    check()
    assert seen["valid"] > 0 and seen["refused"] > 0, seen  # both outcomes were reached
