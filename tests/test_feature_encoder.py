"""The matrix-product feature encoder (fedw2v.feature_encoder): transformers' numbers (outputs and gradients) for
every kernel/stride shape, the same parameters under the same names, freezing, bf16 autocast, and where
`local_train` uses it (CPU, on by default; off with --no-gemm-feature-encoder); and transformers' encoder, where it
trains, skipping the gradient of the input audio with the same weight gradients bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from fedw2v import feature_encoder
from fedw2v.batching import utterances_from_manifest
from fedw2v.config.train import recipe
from fedw2v.model import TINY_ENCODER, load_model
from fedw2v.train import local_train, set_feature_encoder_frozen

# (conv_dim, conv_kernel, conv_stride, conv_bias): the tiny preset (kernel = 2 x stride and = stride), the
# large-lv60 shape (kernel 3 over stride 2: a partial last block), a kernel shorter than its stride.
SHAPES = {
    "tiny": (TINY_ENCODER["conv_dim"], TINY_ENCODER["conv_kernel"], TINY_ENCODER["conv_stride"], False),
    "lv60": ((24, 24, 24, 24, 24, 24, 24), (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), True),
    "short-kernel": ((8, 16, 16), (7, 2, 5), (3, 3, 2), True),
}


def _close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """Equal to float rounding: the largest difference is at most ``tol`` of the largest magnitude."""
    return bool((a - b).abs().max() <= tol * b.abs().max())


def _model(shape: str, seed: int = 0) -> Wav2Vec2ForCTC:
    dims, kernels, strides, bias = SHAPES[shape]
    config = Wav2Vec2Config(conv_dim=dims, conv_kernel=kernels, conv_stride=strides, conv_bias=bias,
                            feat_extract_norm="layer", do_stable_layer_norm=True, hidden_size=32,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=12,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(config)
    with torch.no_grad():  # layer-norm affine parameters away from 1/0, so a dropped one shows
        for name, p in model.named_parameters():
            if "feature_extractor" in name and "layer_norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.train()


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("samples", [4000, 4321])  # a multiple of the total stride and not
def test_outputs_and_gradients_are_transformers(shape, samples):
    model = _model(shape)
    stock = model.wav2vec2.feature_extractor
    assert feature_encoder.install(model)
    gemm = model.wav2vec2.feature_extractor
    audio = torch.randn(3, samples, generator=torch.Generator().manual_seed(1))
    ref, out = stock(audio), gemm(audio)
    assert out.shape == ref.shape
    assert _close(out, ref, 1e-5), (out - ref).abs().max()
    weights = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))  # a loss that weighs every frame
    params = list(stock.parameters())
    assert params == list(gemm.parameters())
    ref_grads = torch.autograd.grad((stock(audio) * weights).sum(), params)
    grads = torch.autograd.grad((gemm(audio) * weights).sum(), params)
    for (name, _), a, b in zip(stock.named_parameters(), ref_grads, grads):
        assert _close(b, a, 1e-5), f"{name}: {(a - b).abs().max()} of {a.abs().max()}"


def test_the_gradient_reaches_the_layers_below_and_each_item_only_its_own():
    model = _model("lv60")
    feature_encoder.install(model)
    gemm = model.wav2vec2.feature_extractor
    audio = torch.randn(2, 3000, requires_grad=True)
    out = gemm(audio)
    out[0].sum().backward()  # the first item's frames only
    assert torch.count_nonzero(audio.grad[1]) == 0  # nothing leaks across the stacked rows
    assert torch.count_nonzero(audio.grad[0]) > 0
    ref = audio.detach().clone().requires_grad_()
    gemm.original[0].eval()(ref)[0].sum().backward()  # (in train mode it sets requires_grad on its input)
    assert _close(audio.grad, ref.grad, 1e-5)


def test_same_parameters_same_names_and_back_again(tmp_path):
    model = _model("tiny")
    keys = {k: v.data_ptr() for k, v in model.state_dict().items()}
    original = model.wav2vec2.feature_extractor
    assert feature_encoder.install(model) and feature_encoder.install(model)  # idempotent
    assert isinstance(model.wav2vec2.feature_extractor, feature_encoder.GemmFeatureEncoder)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == keys
    model.save_pretrained(tmp_path)  # a checkpoint written meanwhile loads into transformers' model, whole
    saved = Wav2Vec2ForCTC.from_pretrained(tmp_path, trust_remote_code=False).state_dict()
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    set_feature_encoder_frozen(model, True)
    feature_encoder.uninstall(model)
    assert model.wav2vec2.feature_extractor is original
    assert original._requires_grad is False  # the freezing survives the swap back
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == keys


def test_a_group_norm_encoder_keeps_transformers_convolutions():
    model = Wav2Vec2ForCTC(Wav2Vec2Config(conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), hidden_size=16,
                                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                          vocab_size=8, feat_extract_norm="group"))
    original = model.wav2vec2.feature_extractor
    assert not feature_encoder.install(model)
    assert model.wav2vec2.feature_extractor is original


def _transformers_model(norm: str, checkpointing: bool) -> Wav2Vec2ForCTC:
    config = Wav2Vec2Config(conv_dim=(16, 16, 16), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), hidden_size=16,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=8,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm=norm,
                            do_stable_layer_norm=norm == "layer", hidden_dropout=0.0, activation_dropout=0.0,
                            attention_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0)
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).train()
    if checkpointing:  # transformers 5's name for it, and the older one
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    return model


def _first_conv_inputs(model: Wav2Vec2ForCTC) -> list[bool]:
    """Whether each call of the first convolution got an input that autograd differentiates."""
    seen: list[bool] = []
    model.wav2vec2.feature_extractor.conv_layers[0].conv.register_forward_hook(
        lambda module, args, out: seen.append(args[0].requires_grad))
    return seen


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("norm", ["group", "layer"])
def test_transformers_encoder_skips_the_audio_gradient_and_the_weights_get_the_same_ones(norm, checkpointing):
    stock = _transformers_model(norm, checkpointing)
    skipping = copy.deepcopy(stock)
    feature_encoder.skip_audio_gradient(skipping)
    feature_encoder.skip_audio_gradient(skipping)  # idempotent: one hook
    assert len(skipping.wav2vec2.feature_extractor.conv_layers[0]._forward_pre_hooks) == 1
    audio = torch.randn(3, 4321, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 1, 2]])
    calls = {}
    for name, model in (("stock", stock), ("skipping", skipping)):
        calls[name] = _first_conv_inputs(model)
        torch.manual_seed(2)  # the same dropout masks
        model(audio, labels=labels).loss.backward()
    assert calls["stock"] and all(calls["stock"])  # transformers asks for the audio's gradient ...
    assert calls["skipping"] and not any(calls["skipping"])  # ... and with the hook, never
    for (name, a), b in zip(stock.named_parameters(), skipping.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        assert a.grad is None or torch.equal(a.grad, b.grad), name  # bit for bit


def test_local_train_skips_the_audio_gradient_with_transformers_encoder(train_utts):
    loaded = load_model("tiny", [u.text for u in train_utts], seed=0)
    calls = _first_conv_inputs(loaded.model)
    local_train(loaded.model, loaded.processor, train_utts[:4],
                recipe("tiny", device="cpu", seed=3, epochs=1, max_batch_size=4, gemm_feature_encoder=False))
    assert calls and not any(calls)


def test_a_frozen_encoder_gets_no_gradient_and_the_rest_does():
    model = _model("tiny")
    feature_encoder.install(model)
    set_feature_encoder_frozen(model, True)
    model(torch.randn(2, 8000), labels=torch.tensor([[1, 2, 3], [4, 5, 6]])).loss.backward()
    cnn = [p.grad for n, p in model.named_parameters() if ".feature_extractor." in n]
    rest = [p.grad for n, p in model.named_parameters() if ".feature_extractor." not in n and "masked_spec" not in n]
    assert cnn and all(g is None for g in cnn)
    assert all(g is not None for g in rest)


def test_bf16_autocast_runs_the_products_in_bf16_like_transformers_convolutions():
    model = _model("tiny")
    stock = model.wav2vec2.feature_extractor
    feature_encoder.install(model)
    audio = torch.randn(2, 6400)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = stock(audio), model.wav2vec2.feature_extractor(audio)
        loss = out.float().square().mean()
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.allclose(out.float(), ref.float(), atol=0.1)
    loss.backward()
    grads = [p.grad for p in stock.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.fixture(scope="module")
def train_utts(asr_corpus):
    return utterances_from_manifest(asr_corpus[0], split="train")[:12]


def test_local_train_on_the_cpu_uses_it_unless_told_not_to_and_learns_the_same(train_utts):
    base = load_model("tiny", [u.text for u in train_utts], seed=0)
    config = recipe("tiny", device="cpu", seed=3, epochs=1, max_batch_size=4)
    runs = {}
    for gemm in (True, False):
        model = copy.deepcopy(base.model)
        metrics = local_train(model, base.processor, train_utts,
                              recipe("tiny", device="cpu", seed=3, epochs=1, max_batch_size=4,
                                     gemm_feature_encoder=gemm))
        assert isinstance(model.wav2vec2.feature_extractor, feature_encoder.GemmFeatureEncoder) is gemm
        runs[gemm] = (metrics, model.state_dict())
    assert config.gemm_feature_encoder  # the default
    (on, weights_on), (off, weights_off) = runs[True], runs[False]
    assert on.steps == off.steps > 0
    assert on.epoch_loss == pytest.approx(off.epoch_loss, rel=1e-4)
    assert weights_on.keys() == weights_off.keys()
    for key in weights_on:
        assert torch.allclose(weights_on[key], weights_off[key], atol=1e-4, rtol=1e-3), key
