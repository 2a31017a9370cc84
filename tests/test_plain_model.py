"""The plain-torch wav2vec2 forward pass (`fedw2v.plain_model`, ``transcribe --engine``): the same logits as
transformers' Wav2Vec2ForCTC for both layouts, padded or not, across the feature encoder's blocks; what it
refuses and why; no transformers import on its path; and the CLI's fast exit that comes with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from fedw2v import plain_model as pm
from fedw2v.cli import app
from fedw2v.decode import Decoder, Vocab
from fedw2v.errors import InputError
from fedw2v.model import ModelSource, build_processor, load_model, resolve, save_model, with_ctc_head
from fedw2v.text import character_vocabulary

runner = CliRunner()
LAYOUTS = {
    "base": dict(feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False),  # wav2vec2-base
    "large-lv60": dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True),
}


def _save(path: Path, layout: str, **overrides) -> Path:
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    vocab = character_vocabulary()
    config = with_ctc_head(Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, conv_dim=(32, 32, 32),
        conv_kernel=(10, 4, 4), conv_stride=(5, 4, 4), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        **{**LAYOUTS[layout], **overrides}), len(vocab))  # fmt: skip
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config)
    processor = build_processor(vocab, config)
    processor.feature_extractor.return_attention_mask = layout == "large-lv60"  # as the hub's models have it
    return save_model(model, processor, path)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    return {layout: _save(root / layout, layout) for layout in LAYOUTS}


def _audio(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    return (np.sin(2 * np.pi * 220 * t) * (1 + np.sin(t)) + 0.3 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mask", [True, False])
def test_logits_equal_transformers(model_dirs, layout, mask):
    """Same inputs, same logits (to float rounding) and the same greedy ids, for a batch of a short item and one
    longer than the feature encoder's block (so the blocks, and group norm's two passes, are crossed)."""
    source = resolve(str(model_dirs[layout]))
    hf, plain = load_model(source), pm.load(source)
    long_s = pm.BLOCK_FRAMES * 320 / 16000 * 2.3
    audios = [_audio(long_s, 0), _audio(1.3, 1)]
    a = hf.processor.feature_extractor(audios, sampling_rate=16000, padding=True, return_tensors="pt",
                                       return_attention_mask=mask)
    b = plain.processor.feature_extractor(audios, sampling_rate=16000, padding=True, return_tensors="pt",
                                          return_attention_mask=mask)
    assert a.keys() == b.keys() and torch.equal(a["input_values"], b["input_values"])
    with torch.inference_mode():
        expected = hf.model.eval()(**a).logits
    got = plain.model(**b).logits
    frames = hf.model._get_feat_extract_output_lengths(torch.tensor([len(x) for x in audios]))
    assert torch.equal(frames, plain.model._get_feat_extract_output_lengths(torch.tensor([len(x) for x in audios])))
    assert frames[0] > 2 * pm.BLOCK_FRAMES
    for i, n in enumerate(frames.tolist()):
        gap = (got[i, :n] - expected[i, :n]).abs().max()
        assert gap < 2e-5, gap
        assert torch.equal(got[i, :n].argmax(-1), expected[i, :n].argmax(-1))
        assert got[i, :n].std() > 1e-3  # not a degenerate model


def test_tokenizer_and_decoder_read_the_same(model_dirs):
    source = resolve(str(model_dirs["large-lv60"]))
    hf, plain = load_model(source), pm.load(source)
    assert Vocab.from_tokenizer(plain.processor.tokenizer) == Vocab.from_tokenizer(hf.processor.tokenizer)
    audio = _audio(7.0, 4)
    a = Decoder(hf.model, hf.processor, "cpu").transcribe(audio, 3.0, 0.5)
    b = Decoder(plain.model, plain.processor, "cpu").transcribe(audio, 3.0, 0.5)
    assert (a.text, a.words, a.chunks) == (b.text, b.words, b.chunks) and a.chunks > 1


def test_defaults_are_transformers_defaults():
    """A config.json key that is missing takes Wav2Vec2Config's default (hub configs omit some)."""
    from transformers import Wav2Vec2Config

    ref = Wav2Vec2Config()
    for f in fields(pm.PlainConfig):
        want = getattr(ref, f.name)
        assert getattr(pm.PlainConfig(), f.name) == (tuple(want) if isinstance(want, list) else want), f.name


def test_old_weight_norm_names_load(model_dirs, tmp_path):
    """Checkpoints saved before torch's parametrizations name the position conv's weight norm weight_g/_v."""
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "old"
    shutil.copytree(model_dirs["base"], d)
    w = load_file(str(d / pm.WEIGHTS))
    for new, old in zip(pm.WEIGHT_NORM_KEYS[0], pm.WEIGHT_NORM_KEYS[1]):
        w[pm.POS_CONV + old] = w.pop(pm.POS_CONV + new)
    save_file(w, str(d / pm.WEIGHTS))
    x = torch.from_numpy(_audio(1.0, 5))[None]
    a = pm.load(resolve(str(model_dirs["base"]))).model(input_values=x).logits
    b = pm.load(resolve(str(d))).model(input_values=x).logits
    assert torch.equal(a, b)


def _edit_config(src: Path, dst: Path, **changes) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("change, reason", [
    ({"add_adapter": True}, "adapter"),
    ({"adapter_attn_dim": 16}, "adapter"),
    ({"hidden_act": "mish"}, "hidden_act 'mish'"),
    ({"feat_extract_norm": "batch"}, "feat_extract_norm"),
    ({"model_type": "hubert"}, "model_type"),
    ({"architectures": ["Wav2Vec2Model"]}, "no CTC head"),
])  # fmt: skip
def test_what_it_refuses_falls_back_to_transformers(model_dirs, tmp_path, change, reason):
    d = _edit_config(model_dirs["base"], tmp_path / "m", **change)
    source = resolve(str(d))
    assert reason in pm.unsupported(source)
    with pytest.raises(InputError, match="--engine torch cannot run this model"):
        pm.load_for_inference(source, "torch")


def test_other_sources_are_left_to_transformers(model_dirs, tmp_path):
    assert "random-init" in pm.unsupported(resolve("tiny"))
    assert "hub id" in pm.unsupported(ModelSource("facebook/x", "hub", "facebook/x"))
    import shutil

    d = tmp_path / "pickled"
    shutil.copytree(model_dirs["base"], d)
    (d / pm.WEIGHTS).rename(d / "pytorch_model.bin")
    assert "sharded or pickled" in pm.unsupported(resolve(str(d)))
    loaded, engine = pm.load_for_inference(resolve(str(model_dirs["base"])), "transformers")
    assert engine == "transformers" and type(loaded.model).__name__ == "Wav2Vec2ForCTC"
    loaded, engine = pm.load_for_inference(resolve(str(model_dirs["base"])), "auto")
    assert engine == "torch" and isinstance(loaded.model, pm.PlainWav2Vec2ForCTC)


def test_weights_that_do_not_match_are_one_line(model_dirs, tmp_path):
    d = _edit_config(model_dirs["base"], tmp_path / "m", hidden_size=128)
    with pytest.raises(InputError, match=r"model.safetensors: the weights do not match config.json") as exc:
        pm.load(resolve(str(d)))
    assert "\n" not in str(exc.value)
    (tmp_path / "m" / pm.WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="cannot load the model weights"):
        pm.load(resolve(str(d)))


def test_custom_code_is_refused_on_this_path_too(model_dirs, tmp_path):
    d = _edit_config(model_dirs["base"], tmp_path / "m", auto_map={"AutoModel": "x.Model"})
    res = runner.invoke(app, ["transcribe", str(tmp_path / "a.wav"), "--model", str(d), "--engine", "torch"])
    assert res.exit_code == 2 and "auto_map" in res.stderr


def test_cli_engines_agree_and_torch_never_imports_transformers(model_dirs, tmp_path):
    wav = tmp_path / "a.wav"
    sf.write(wav, _audio(4.0, 6), 16000, subtype="PCM_16")
    model = str(model_dirs["large-lv60"])
    outs = {}
    for engine in ("torch", "transformers"):
        res = runner.invoke(app, ["transcribe", str(wav), "--model", model, "--format", "json", "--engine", engine])
        assert res.exit_code == 0, res.output
        assert f"forward pass: {engine}" in res.stderr
        outs[engine] = json.loads(res.stdout)["files"]
    assert outs["torch"] == outs["transformers"] and outs["torch"][0]["text"]
    probe = ("import sys; from fedw2v.cli import app; "
             f"app(['transcribe', {str(wav)!r}, '--model', {model!r}], standalone_mode=False); "
             "print('transformers' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _main(monkeypatch, argv):
    """Run `fedw2v.cli.main` (`cli_group.run_main`) in this process with os._exit caught: (exit code, how it
    ended)."""
    from fedw2v import cli, cli_group

    class Exited(BaseException):
        pass

    codes = []

    def fake_exit(code):
        codes.append(code)
        raise Exited

    monkeypatch.setattr(cli_group.os, "_exit", fake_exit)
    monkeypatch.setattr(sys, "argv", ["fedw2v", *argv])
    try:
        cli.main()
    except Exited:
        return codes[0], "os._exit"
    except SystemExit as exc:
        return exc.code, "SystemExit"


def test_transcribe_ends_without_interpreter_teardown(monkeypatch, model_dirs, tmp_path, capsys):
    wav = tmp_path / "a.wav"
    sf.write(wav, _audio(1.0, 7), 16000, subtype="PCM_16")
    model = str(model_dirs["base"])
    assert _main(monkeypatch, ["transcribe", str(wav), "--model", model]) == (0, "os._exit")
    assert _main(monkeypatch, ["transcribe", str(wav), str(tmp_path / "missing.wav"), "--model", model]) == (
        1, "os._exit")  # fmt: skip
    # An error before any transcription, and other commands, end the ordinary way.
    assert _main(monkeypatch, ["transcribe", str(wav), "--model", str(tmp_path / "none")]) == (2, "SystemExit")
    assert _main(monkeypatch, ["--version"])[1] == "SystemExit"


def test_the_real_process_flushes_what_it_printed(model_dirs, tmp_path):
    """os._exit skips the buffers' flush at exit: everything printed to a pipe must still arrive."""
    wavs = []
    for i in range(3):
        wavs.append(tmp_path / f"{i}.wav")
        sf.write(wavs[-1], _audio(1.0 + i, 8 + i), 16000, subtype="PCM_16")
    env = _buffered_env()
    out = subprocess.run([sys.executable, "-m", "fedw2v.cli", "transcribe", *map(str, wavs), "--model",
                          str(model_dirs["base"]), "--format", "json"], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["files"]) == 3 and "forward pass: torch" in out.stderr


def test_exit_now_flushes_buffered_output():
    probe = ("import sys; from fedw2v.cli_group import exit_now; "
             "sys.stdout.write('out'); sys.stderr.write('err'); exit_now(3)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env=_buffered_env())
    assert (out.returncode, out.stdout, out.stderr) == (3, "out", "err")


def _buffered_env() -> dict[str, str]:
    """This environment without PYTHONUNBUFFERED (which CI shells may set): stdout to a pipe is then
    block-buffered, as for a user's `fedw2v transcribe … | less`."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
