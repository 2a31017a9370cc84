"""fedw2v.model: every --model form, the character vocabulary, new CTC heads, saving, pickle refusal."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import fedw2v
from fedw2v import runs
from fedw2v.errors import InputError
from fedw2v.model import (
    ModelSource,
    build_processor,
    default_source,
    frame_seconds,
    load_model,
    num_parameters,
    resolve,
    save_model,
    tiny_config,
    with_ctc_head,
)
from fedw2v.text import BASE_CHARACTERS, character_vocabulary, vocabulary_covers

TEXTS = ["it 's 42 ok", "rock-n-roll café", "hello world"]


def _encoder_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("lm_head.")}


def _same_encoder(a, b):
    sa, sb = _encoder_state(a), _encoder_state(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- vocabulary ---------------------------------------------------------------------------------------------


def test_character_vocabulary_order_and_extras():
    vocab = character_vocabulary(TEXTS)
    assert vocab[:3] == ["<pad>", "<unk>", "|"]  # blank/pad id 0, word separator
    assert vocab[3:3 + len(BASE_CHARACTERS)] == list(BASE_CHARACTERS)  # a-z, apostrophe, digits always
    assert vocab[3 + len(BASE_CHARACTERS):] == ["-", "é"]  # symbols of the texts, by code point
    assert character_vocabulary(reversed(TEXTS)) == vocab  # order of the texts does not matter
    assert character_vocabulary() == ["<pad>", "<unk>", "|", *BASE_CHARACTERS]
    assert len(set(vocab)) == len(vocab)


def test_vocabulary_covers():
    assert vocabulary_covers(character_vocabulary(TEXTS), TEXTS) == set()
    assert vocabulary_covers(character_vocabulary(), TEXTS) == {"-", "é"}
    assert vocabulary_covers(["<pad>", "A", "B"], ["ab"]) == {"a", "b"}


def test_processor_round_trip_text():
    vocab = character_vocabulary(TEXTS)
    proc = build_processor(vocab, with_ctc_head(tiny_config(), len(vocab)))
    ids = proc.tokenizer("it 's 42 ok")["input_ids"]
    assert ids[2] == vocab.index("|")
    assert proc.tokenizer.decode(ids, group_tokens=False) == "it 's 42 ok"  # no clean-up of " 's"
    assert proc.tokenizer.pad_token_id == 0 and proc.tokenizer.bos_token is None and proc.tokenizer.eos_token is None
    assert proc.feature_extractor.return_attention_mask  # layer-norm feature encoder


# --- the tiny preset ----------------------------------------------------------------------------------------


def test_tiny_preset_is_reference_config_with_new_head():
    loaded = load_model("tiny", TEXTS)
    cfg = loaded.model.config
    assert loaded.source.kind == "preset" and loaded.new_head
    assert tuple(cfg.conv_dim) == (64, 128, 128, 128, 128) and tuple(cfg.conv_stride) == (5, 4, 4, 2, 2)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (192, 3, 4, 512)
    assert cfg.feat_extract_norm == "layer" and cfg.do_stable_layer_norm and cfg.mask_time_prob == 0.05
    assert cfg.vocab_size == len(character_vocabulary(TEXTS)) == loaded.model.lm_head.out_features
    assert cfg.pad_token_id == 0 and cfg.ctc_loss_reduction == "mean"
    assert 1.2e6 < num_parameters(loaded.model) < 2.0e6
    assert frame_seconds(cfg) == pytest.approx(0.02)
    assert loaded.vocabulary == character_vocabulary(TEXTS)


def test_tiny_preset_is_seeded():
    a, b, c = load_model("tiny", seed=1), load_model("tiny", seed=1), load_model("tiny", seed=2)
    pa, pb, pc = (next(m.model.lm_head.parameters()) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


# --- the packaged tiny-pretrained preset (committed: fedw2v/data/tiny-pretrained, rebuilt by `make pretrained`) ---

PRETRAINED = Path(fedw2v.__file__).resolve().parent / "data" / "tiny-pretrained"


def test_tiny_pretrained_preset_resolves_and_loads():
    source = resolve("tiny-pretrained")
    assert (source.kind, source.spec, Path(source.location)) == ("preset", "tiny-pretrained", PRETRAINED)
    assert not source.random_init and resolve("tiny").random_init
    assert str(source) == "tiny-pretrained (preset)"
    loaded = load_model("tiny-pretrained")  # a CTC head and tokenizer: it transcribes as it is
    assert not loaded.new_head and loaded.vocabulary == character_vocabulary()
    cfg, tiny = loaded.model.config, tiny_config()
    for key in ("conv_dim", "conv_kernel", "conv_stride", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "feat_extract_norm", "do_stable_layer_norm"):
        mine, preset = getattr(cfg, key), getattr(tiny, key)
        assert (list(mine) if isinstance(mine, (list, tuple)) else mine) == (
            list(preset) if isinstance(preset, (list, tuple)) else preset), key
    assert 1.2e6 < num_parameters(loaded.model) < 2.0e6
    # its weights are trained, not the random ones of the `tiny` preset
    assert not _same_encoder(loaded.model, load_model("tiny").model)
    # training texts it covers keep its head; others get a new head over the same trained encoder
    assert not load_model("tiny-pretrained", ["it 's a small village"]).new_head
    other = load_model("tiny-pretrained", TEXTS)
    assert other.new_head and _same_encoder(other.model, loaded.model)


def test_tiny_pretrained_is_described_and_packaged():
    import tomllib
    from fnmatch import fnmatch

    from fedw2v.corpus.voices import VOICES

    root = PRETRAINED.parents[2]
    files = sorted(p.name for p in PRETRAINED.iterdir())
    assert {"config.json", "model.safetensors", "vocab.json", "pretrain.json", "README.md"} <= set(files)
    info = json.loads((PRETRAINED / "pretrain.json").read_text())
    assert info["fedw2v_version"] and info["training"]["steps"] > 0 and info["training"]["seed"] == 0
    assert 0 < info["evaluation"]["pretrain_test"]["cer"] < 1 and 0 < info["evaluation"]["demo_test"]["cer"] < 1
    # pretrained on voices the demo never uses (`make demo` synthesises DEMO_VOICES of the Makefile)
    line = next(x for x in (root / "Makefile").read_text().splitlines() if x.startswith("DEMO_VOICES"))
    demo = set(line.split("=", 1)[1].strip().split(","))
    assert demo == {v for split in info["demo_corpus"]["voices"].values() for v in split}
    used = {name.split()[0] for split in info["corpus"]["voices"].values() for name in split}
    known = {v.speaker for v in VOICES}
    assert used and used <= known and demo <= known
    assert used.isdisjoint(demo | {"EspeakGbM4"})  # EspeakGbM4 speaks exactly as the demo's EspeakGbF4
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert all(any(fnmatch(f"data/tiny-pretrained/{f}", g) for g in globs["fedw2v"]) for f in files)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_tiny_pretrained_recognises_a_voice_it_never_heard(tmp_path):
    """The demo's starting point already reads speech of a demo test voice (en-us+m7, never in pretraining)."""
    import subprocess

    import soundfile as sf
    import soxr

    from fedw2v.decode import Decoder
    from fedw2v.metrics import score

    sentences = ["today i 'm going to talk about the old captain and his bicycle",
                 "we don 't really know how to repair the water pump",
                 "my grandmother visited the museum in the city last winter"]
    audios = []
    for i, text in enumerate(sentences):
        wav = tmp_path / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us+m7", "-w", str(wav), "--", text.replace(" '", "'")], check=True)
        audio, rate = sf.read(wav, dtype="float32")
        audios.append(soxr.resample(audio, rate, 16_000).astype("float32"))
    loaded = load_model("tiny-pretrained")
    hyps = Decoder(loaded.model, loaded.processor, "cpu").decode_batch(audios)
    assert score(sentences, hyps).cer < 0.75, hyps  # 1.0 for an untrained model (all blank)


def test_tiny_pretrained_missing_says_how_to_rebuild(monkeypatch):
    import fedw2v.model as model_module

    monkeypatch.setitem(model_module.PRETRAINED_DIRS, "tiny-pretrained", ("data", "not-built"))
    with pytest.raises(InputError, match="tiny-pretrained: the packaged model is missing") as exc:
        resolve("tiny-pretrained")
    assert "make pretrained" in exc.value.hint


# --- saving -------------------------------------------------------------------------------------------------


def test_save_model_writes_complete_hf_directory_atomically(tmp_path):
    loaded = load_model("tiny", TEXTS)
    out = save_model(loaded.model, loaded.processor, tmp_path / "m", extra_json={"state.json": {"round": 3}})
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "vocab.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".bin") for n in names)
    assert json.loads((out / "state.json").read_text()) == {"round": 3}
    fe = json.loads((out / "preprocessor_config.json").read_text())
    assert fe["feature_extractor_type"] == "Wav2Vec2FeatureExtractor" and fe["sampling_rate"] == 16000
    # Saving again replaces the directory and leaves no temporary directories behind.
    save_model(loaded.model, loaded.processor, out)
    assert sorted(os.listdir(tmp_path)) == ["m"]
    again = load_model(out)
    assert not again.new_head and again.source.kind == "directory"
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), again.model.state_dict().values()))


# --- every --model form ---------------------------------------------------------------------------------------


def _make_run(tmp_path, loaded, name="epoch-0002"):
    run = tmp_path / "runs" / "r1"
    save_model(loaded.model, loaded.processor, run / "checkpoints" / "epoch-0001")
    save_model(loaded.model, loaded.processor, run / "checkpoints" / name)
    runs.publish_checkpoint(run, name)
    return run


def test_model_forms_local(tmp_path, monkeypatch):
    loaded = load_model("tiny", TEXTS)
    hf_dir = save_model(loaded.model, loaded.processor, tmp_path / "hf")
    run = _make_run(tmp_path, loaded)
    ckpt = run / "checkpoints" / "epoch-0002"
    assert resolve(str(hf_dir)).kind == "directory"
    assert resolve(str(ckpt)) == ModelSource(str(ckpt), "checkpoint", str(ckpt.resolve()))
    assert resolve(str(run)).location == str(ckpt.resolve())  # a run dir -> its LATEST checkpoint
    assert resolve(str(run / "checkpoints")).location == str(ckpt.resolve())
    assert resolve("tiny").kind == "preset"
    assert resolve("facebook/wav2vec2-large-lv60").kind == "hub"
    for spec in (hf_dir, ckpt, run):
        got = load_model(str(spec))
        assert not got.new_head and _same_encoder(got.model, loaded.model)
    # The default model (transcribe without --model) is the newest run's LATEST checkpoint.
    runs.mark_latest_run(run, tmp_path / "runs")
    assert default_source(tmp_path / "runs").location == str(ckpt.resolve())
    monkeypatch.setenv(runs.RUNS_ENV, str(tmp_path / "runs"))
    assert default_source().location == str(ckpt.resolve())


def test_newest_run_without_pointer_uses_latest_mtime(tmp_path):
    loaded = load_model("tiny")
    root = tmp_path / "runs"
    a = _make_run(tmp_path, loaded)
    b = root / "r2"
    save_model(loaded.model, loaded.processor, b / "checkpoints" / "round-0001")
    runs.publish_checkpoint(b, "round-0001")
    os.utime(a / "checkpoints" / "LATEST", (1, 1))
    assert runs.newest_run(root) == b
    with pytest.raises(InputError, match="no --model given"):
        default_source(tmp_path / "empty")


def test_hub_id_from_cache_offline(tmp_path):
    """A hub id resolves through the Hugging Face cache (offline here): a pretrained encoder without CTC head
    gets a new head over the texts' characters; its encoder weights are the hub model's."""
    from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    encoder = Wav2Vec2Model(tiny_config())
    snap = tmp_path / "hub" / "models--fedw2v-test--tiny-encoder" / "snapshots" / ("a" * 40)
    encoder.save_pretrained(snap)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    loaded = load_model("fedw2v-test/tiny-encoder", TEXTS, cache_dir=tmp_path / "hub")
    assert loaded.source.kind == "hub" and loaded.new_head
    assert loaded.model.config.vocab_size == len(character_vocabulary(TEXTS))
    assert torch.equal(loaded.model.wav2vec2.encoder.layers[0].attention.q_proj.weight,
                       encoder.encoder.layers[0].attention.q_proj.weight)  # fmt: skip
    with pytest.raises(InputError, match="Hugging Face Hub"):
        load_model("fedw2v-test/not-there", TEXTS, cache_dir=tmp_path / "hub")


def test_pretrained_encoder_dir_gets_new_head_and_refuses_inference(tmp_path):
    from transformers import Wav2Vec2Model

    encoder = Wav2Vec2Model(tiny_config())
    encoder.save_pretrained(tmp_path / "enc")
    loaded = load_model(str(tmp_path / "enc"), TEXTS)
    assert loaded.new_head and loaded.model.lm_head.out_features == len(character_vocabulary(TEXTS))
    assert torch.equal(loaded.model.wav2vec2.feature_projection.projection.weight,
                       encoder.feature_projection.projection.weight)  # fmt: skip
    with pytest.raises(InputError, match="no CTC head"):
        load_model(str(tmp_path / "enc"))
    # A CTC model saved without its tokenizer cannot decode either (and says why).
    from transformers import Wav2Vec2ForCTC

    Wav2Vec2ForCTC(with_ctc_head(tiny_config(), 40)).save_pretrained(tmp_path / "no-tokenizer")
    with pytest.raises(InputError, match="no tokenizer"):
        load_model(str(tmp_path / "no-tokenizer"))
    assert load_model(str(tmp_path / "no-tokenizer"), TEXTS).new_head


def test_head_over_other_characters_is_replaced(tmp_path):
    """Like wav2vec2-large-960h-lv60-self: a CTC head over upper-case letters. Inference keeps it; training
    on lower-case texts gets a new head over their characters and keeps the encoder."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC, Wav2Vec2Processor

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: i + 5 for i, c in enumerate("ETAOINSHRDLUCMFWYPVBGKQJXZ'")}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tok = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))
    proc = Wav2Vec2Processor(feature_extractor=Wav2Vec2FeatureExtractor(return_attention_mask=True), tokenizer=tok)
    model = Wav2Vec2ForCTC(with_ctc_head(tiny_config(), len(vocab)))
    save_model(model, proc, tmp_path / "upper")
    as_is = load_model(str(tmp_path / "upper"))
    assert not as_is.new_head and "E" in as_is.vocabulary
    retrained = load_model(str(tmp_path / "upper"), TEXTS)
    assert retrained.new_head and retrained.vocabulary == character_vocabulary(TEXTS)
    assert _same_encoder(retrained.model, model)


def test_pickled_weights_refused_unless_allowed(tmp_path):
    loaded = load_model("tiny")
    d = save_model(loaded.model, loaded.processor, tmp_path / "m")
    torch.save(loaded.model.state_dict(), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(InputError, match="--allow-pickle"):
        load_model(str(d))
    got = load_model(str(d), allow_pickle=True)
    assert _same_encoder(got.model, loaded.model)
    # The command line: refused with a one-line error naming the flag; accepted with it.
    from typer.testing import CliRunner

    from fedw2v.cli import app

    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(16000, np.float32), 16000)
    res = CliRunner().invoke(app, ["transcribe", str(wav), "--model", str(d)])
    assert res.exit_code == 2 and "--allow-pickle" in res.output and "Traceback" not in res.output
    assert CliRunner().invoke(app, ["transcribe", str(wav), "--model", str(d), "--allow-pickle"]).exit_code == 0


def test_resolve_errors(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(InputError, match="is a file"):
        resolve(str(tmp_path / "file.txt"))
    with pytest.raises(InputError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no complete checkpoint"):
        resolve(str(tmp_path / "run"))
    with pytest.raises(InputError, match="no such model directory"):
        resolve("./not/here")
    with pytest.raises(InputError, match="not a local directory"):
        load_model("nobody/nothing-at-all")


def test_cli_model_errors_are_one_line(tmp_path, asr_corpus):
    from typer.testing import CliRunner

    from fedw2v.cli import app

    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "nope"), "--manifest", str(asr_corpus[1])])
    assert res.exit_code == 2
    assert "no such model directory" in res.output and "Traceback" not in res.output


def test_pretraining_refuses_voices_of_the_demo():
    """scripts/pretrain_tiny.py (make pretrained) never trains on a voice the demo scores or federates."""
    import importlib.util

    path = PRETRAINED.parents[2] / "scripts" / "pretrain_tiny.py"
    spec = importlib.util.spec_from_file_location("pretrain_tiny", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.check_voices(script.DEMO_VOICES) == script.DEMO_VOICES
    with pytest.raises(SystemExit, match="overlap the demo corpus's voices: EspeakUsF4"):
        script.check_voices((*script.DEMO_VOICES, "EspeakUsF4"))  # a pretraining voice
    assert "EspeakGbM4" not in script.PRETRAIN_VOICES  # sounds exactly as the demo's EspeakGbF4
    with pytest.raises(SystemExit, match="unknown voice"):
        script.check_voices(("NoSuchVoice",))
