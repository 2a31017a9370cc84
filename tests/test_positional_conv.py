"""The positional convolution with its input's gradient as a forward convolution (fedw2v.positional_conv):
transformers' output bit for bit and its gradients to float rounding, for wav2vec2's even kernel and an odd one,
with and without weight norm; the same parameters under the same names; and where `local_train` uses it (CPU, on
by default; off with --no-fast-pos-conv), alongside the fused optimizer (--no-fused-optimizer)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from fedw2v import positional_conv
from fedw2v.batching import utterances_from_manifest
from fedw2v.config.train import recipe
from fedw2v.model import load_model
from fedw2v.train import Stepper, local_train


def _model(kernel: int, groups: int, weight_norm: bool = True) -> Wav2Vec2ForCTC:
    config = Wav2Vec2Config(conv_dim=(16, 16), conv_kernel=(10, 3), conv_stride=(5, 2), hidden_size=48,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=12,
                            num_conv_pos_embeddings=kernel, num_conv_pos_embedding_groups=groups)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config)
    if not weight_norm:  # a plain Conv1d in the same place, as some checkpoints have
        old = model.wav2vec2.encoder.pos_conv_embed.conv
        conv = torch.nn.Conv1d(48, 48, kernel, padding=kernel // 2, groups=groups)
        with torch.no_grad():
            conv.weight.copy_(old.weight)
            conv.bias.copy_(old.bias)
        model.wav2vec2.encoder.pos_conv_embed.conv = conv
    return model


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return bool((a - b).abs().max() <= tol * b.abs().max())


def _both(theirs: Wav2Vec2ForCTC, ours: Wav2Vec2ForCTC, bf16: bool = False) -> list[tuple]:
    """(output, input gradient, parameter gradients) of each model's positional embedding on the same input and
    output gradient (under bf16 autocast if `bf16`)."""
    torch.manual_seed(1)
    x = torch.randn(3, 37, 48)
    grad = torch.randn(3, 37, 48)
    results = []
    for model in (theirs, ours):
        h = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.wav2vec2.encoder.pos_conv_embed(h)
        out.float().backward(grad)
        params = dict(model.wav2vec2.encoder.pos_conv_embed.named_parameters())
        results.append((out.detach(), h.grad, {k: p.grad for k, p in params.items()}))
    return results


@pytest.mark.parametrize("kernel,groups,weight_norm", [(16, 4, True), (7, 3, True), (16, 4, False)])
def test_output_bit_for_bit_and_gradients_to_rounding(kernel, groups, weight_norm):
    theirs = _model(kernel, groups, weight_norm)
    ours = copy.deepcopy(theirs)
    assert positional_conv.install(ours) and positional_conv.install(ours)  # idempotent
    assert isinstance(ours.wav2vec2.encoder.pos_conv_embed, positional_conv.PositionalConv)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    (out_t, gx_t, gp_t), (out_o, gx_o, gp_o) = _both(theirs, ours)
    assert torch.equal(out_o, out_t)  # the forward is transformers' own call
    assert _close(gx_o, gx_t) and not torch.equal(gx_o, torch.zeros_like(gx_o))
    assert gp_o.keys() == gp_t.keys() and len(gp_o) == (3 if weight_norm else 2)
    for key in gp_t:
        assert _close(gp_o[key], gp_t[key]), key


def test_under_bf16_autocast_it_computes_what_transformers_computes():
    """`--precision bf16` on the CPU: autocast casts a convolution's tensors to bf16; the backward (run without
    autocast) must get them alike (it failed with "Input type (CPUBFloat16Type) and weight type
    (torch.FloatTensor) should be the same"). bf16 autocast runs on any CPU (emulated without avx512_bf16)."""
    theirs = _model(16, 4)
    ours = copy.deepcopy(theirs)
    positional_conv.install(ours)
    (out_t, gx_t, gp_t), (out_o, gx_o, gp_o) = _both(theirs, ours, bf16=True)
    assert out_o.dtype == out_t.dtype == torch.bfloat16 and torch.equal(out_o, out_t)
    assert gx_o.dtype == torch.float32 and _close(gx_o, gx_t, 2e-2)  # bf16: 8 bits of mantissa
    for key in gp_t:
        assert gp_o[key].dtype == torch.float32 and _close(gp_o[key], gp_t[key], 2e-2), key


def test_a_whole_model_trains_alike_and_uninstall_puts_transformers_back():
    theirs = _model(16, 4)
    ours = copy.deepcopy(theirs)
    positional_conv.install(ours)
    audio, labels = torch.randn(2, 4000), torch.tensor([[1, 2, 3], [4, 5, -100]])
    grads = []
    for model in (theirs, ours):
        np.random.seed(0)  # time masking
        torch.manual_seed(0)  # dropout
        model.train()
        model(audio, labels=labels).loss.backward()
        grads.append({k: p.grad for k, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        assert _close(grads[1][key], grads[0][key], 1e-4), key
    original = ours.wav2vec2.encoder.pos_conv_embed.original[0]
    positional_conv.uninstall(ours)
    assert ours.wav2vec2.encoder.pos_conv_embed is original
    assert type(original).__name__ == "Wav2Vec2PositionalConvEmbedding"


def test_install_leaves_other_positional_embeddings_alone():
    model = _model(16, 4)
    model.wav2vec2.encoder.pos_conv_embed.conv.stride = (2,)
    assert not positional_conv.install(model)
    assert not isinstance(model.wav2vec2.encoder.pos_conv_embed, positional_conv.PositionalConv)


@pytest.fixture(scope="module")
def train_utts(asr_corpus):
    return utterances_from_manifest(asr_corpus[0], split="train")[:12]


def test_local_train_uses_both_on_the_cpu_unless_told_not_to(train_utts):
    base = load_model("tiny", [u.text for u in train_utts], seed=0)
    assert recipe("paper").fast_pos_conv and recipe("tiny").fused_optimizer  # the defaults
    runs = {}
    for on in (True, False):
        config = recipe("tiny", device="cpu", seed=3, epochs=1, max_batch_size=4, fast_pos_conv=on,
                        fused_optimizer=on)
        model = copy.deepcopy(base.model)
        assert Stepper(model, config, "cpu", "fp32").optimizer.defaults["fused"] is (True if on else None)
        metrics = local_train(model, base.processor, train_utts, config)
        assert isinstance(model.wav2vec2.encoder.pos_conv_embed, positional_conv.PositionalConv) is on
        runs[on] = (metrics, model.state_dict())
    (on, weights_on), (off, weights_off) = runs[True], runs[False]
    assert on.steps == off.steps > 0
    assert on.epoch_loss == pytest.approx(off.epoch_loss, rel=1e-4)
    assert weights_on.keys() == weights_off.keys()
    assert any(not torch.equal(weights_on[k], weights_off[k]) for k in weights_on)  # rounded differently
    for key in weights_on:
        assert torch.allclose(weights_on[key], weights_off[key], atol=1e-4, rtol=1e-3), key
