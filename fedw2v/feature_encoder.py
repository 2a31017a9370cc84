"""wav2vec2's layer-norm CNN feature encoder for CPU training: its strided convolutions as matrix products over
(batch, time, channels) tensors, a drop-in for transformers' ``Wav2Vec2FeatureEncoder`` with the same parameters.

Why. The layer-norm encoder (``feat_extract_norm="layer"``: wav2vec2-large-lv60, the paper's model, and the
packaged tiny models) is most of a CPU training step of a small model, and transformers' form of it spends much
of that outside arithmetic: each ``nn.Conv1d`` goes through oneDNN, which reorders its (batch, channels, time)
input and output; every ``LayerNorm`` sits between two transposes, so the GELUs and their backward run on strided
memory; the first layer (one input channel) runs far below the CPU's matrix-product speed; and the encoder asks
autograd for the gradient of the input audio. Here every tensor stays (batch, time, channels) and contiguous, and
a convolution of kernel ``k`` and stride ``s`` is ``ceil(k / s)`` matrix products (BLAS, no copies):

- the input is viewed as rows of ``s`` consecutive frames (``s * C`` numbers: a free view of contiguous memory);
  output row ``r`` is the sum over ``q`` of input row ``r + q`` times the weight's taps ``q*s .. q*s + s - 1``
  (the last block reads only the columns of the taps that exist);
- the batch's items are stacked along those rows, so each product covers the whole batch; the few output rows
  whose window runs into the next item (at most ``ceil(k / s) - 1`` per item, all past the item's last valid
  frame) are computed and never used. To keep the rows aligned, the audio is zero-padded to a multiple of the
  encoder's total stride and every layer carries its padded length, with the number of valid frames alongside;
  a valid output frame reads only valid input frames, so neither the padding nor those rows reach it, and the
  last layer's valid frames are returned.

The result equals transformers' to float rounding (tests/test_feature_encoder.py compares outputs and
gradients); the parameters are the same objects under the same names, so state dicts, freezing and federated
exchange are unchanged. `fedw2v.train.local_train` installs it for CPU training (``TrainConfig.gemm_feature_encoder``,
``--no-gemm-feature-encoder`` to keep transformers'); CUDA keeps cuDNN's convolutions. Under bf16 autocast the
products run in bf16, as autocast runs a convolution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class _StridedConv(torch.autograd.Function):
    """``Conv1d(stride=s)`` over ``x``: (rows, s * C_in), ``s`` frames per row, items stacked along the rows.
    Returns (rows, C_out): output frame ``r`` is row ``r``; the last ``ceil(k / s) - 1`` rows are zeros."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int):
        if torch.is_autocast_enabled("cpu"):  # as autocast runs a convolution: in its lower precision
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        blocks = _blocks(weight, stride)
        rows, used = x.shape[0], x.shape[0] - (len(blocks) - 1)
        out = x.new_empty(rows, weight.shape[0])
        out[used:] = 0
        for q, (cols, w) in enumerate(blocks):
            a = x[q : q + used, :cols]
            if q == 0:
                if bias is None:
                    torch.mm(a, w, out=out[:used])
                else:
                    torch.addmm(bias, a, w, out=out[:used])
            else:
                out[:used].addmm_(a, w)
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.stride = bias is not None, stride
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        blocks = _blocks(weight, ctx.stride)
        used = x.shape[0] - (len(blocks) - 1)
        g = grad[:used].to(x.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = x.new_zeros(x.shape)
            for q, (cols, w) in enumerate(blocks):
                grad_x[q : q + used, :cols].addmm_(g, w.t())
        if ctx.needs_input_grad[1]:
            c_in, k = weight.shape[1], weight.shape[2]
            per_tap = torch.cat([x[q : q + used, :cols].t() @ g for q, (cols, _) in enumerate(blocks)])
            grad_w = per_tap.view(k, c_in, -1).permute(2, 1, 0)  # rows (tap, input channel), as _blocks
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None


def _blocks(weight: torch.Tensor, stride: int) -> list[tuple[int, torch.Tensor]]:
    """The weight as ``ceil(k / stride)`` matrices, one per block of ``stride`` taps: (columns of the input row
    it reads, (columns, C_out) matrix); rows ordered (tap, input channel), as the input rows are."""
    c_out, c_in, k = weight.shape
    taps = weight.permute(2, 1, 0).reshape(k * c_in, c_out)  # row tap*C_in + c
    return [(min(stride, k - q * stride) * c_in, taps[q * stride * c_in : (q * stride + stride) * c_in])
            for q in range(math.ceil(k / stride))]


class GemmFeatureEncoder(nn.Module):
    """Takes the place of ``model.wav2vec2.feature_extractor`` (see the module docstring): the same
    ``conv_layers`` (so the same parameter names), the same call (``(batch, samples)`` in, ``(batch, channels,
    frames)`` out) and the same freezing switch."""

    def __init__(self, original: nn.Module, config: Any):
        super().__init__()
        self.conv_layers = original.conv_layers
        self.kernels, self.strides = tuple(config.conv_kernel), tuple(config.conv_stride)
        self.activation = original.conv_layers[0].activation
        self.gradient_checkpointing = False
        self._requires_grad = getattr(original, "_requires_grad", True)
        self.original = [original]  # a list: not a submodule, so not in the state dict

    def _freeze_parameters(self) -> None:
        for param in self.parameters():
            param.requires_grad = False
        self._requires_grad = False

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        batch, samples = input_values.shape
        total = math.prod(self.strides)
        padded = -(-samples // total) * total
        h = input_values if padded == samples else nn.functional.pad(input_values, (0, padded - samples))
        valid, length, channels = samples, padded, 1
        for i, layer in enumerate(self.conv_layers):
            k, s = self.kernels[i], self.strides[i]
            valid, length = (valid - k) // s + 1, length // s
            if valid < 1:
                raise ValueError(f"input is too short for the feature encoder ({samples} samples)")
            h = _StridedConv.apply(h.reshape(batch * length, s * channels), layer.conv.weight, layer.conv.bias, s)
            channels = h.shape[-1]
            h = h.view(batch, length, channels)
            norm = layer.layer_norm
            h = self.activation(nn.functional.layer_norm(h, (channels,), norm.weight, norm.bias, norm.eps))
        return h[:, :valid].transpose(1, 2)


def install(model: Any) -> bool:
    """Put a `GemmFeatureEncoder` in the place of ``model``'s feature encoder (idempotent). False, and nothing
    changed, for an encoder other than transformers' wav2vec2 one with layer norm (``feat_extract_norm="layer"``):
    wav2vec2-base's group-norm encoder is as fast in transformers' form (BENCHMARKS.md)."""
    w2v = model.wav2vec2
    current = w2v.feature_extractor
    if isinstance(current, GemmFeatureEncoder):
        return True
    if type(current).__name__ != "Wav2Vec2FeatureEncoder" or w2v.config.feat_extract_norm != "layer":
        return False
    w2v.feature_extractor = GemmFeatureEncoder(current, w2v.config)
    return True


def uninstall(model: Any) -> None:
    """Put transformers' encoder back (the same parameters), e.g. before training on CUDA."""
    current = model.wav2vec2.feature_extractor
    if isinstance(current, GemmFeatureEncoder):
        original = current.original[0]
        original._requires_grad = current._requires_grad
        model.wav2vec2.feature_extractor = original


def skip_audio_gradient(model: Any) -> None:
    """Keep transformers' feature encoder from computing the gradient of the input audio (idempotent).

    In training, `Wav2Vec2FeatureEncoder` marks its input as requiring a gradient, so that gradient checkpointing
    has an input to differentiate, and autograd then runs the first convolution's backward for the audio too,
    which nothing reads: on wav2vec2-base at batch 8 that is as much work as the whole layer otherwise takes
    (BENCHMARKS.md). A forward pre-hook on the first layer hands it the audio detached. The weights' gradients are
    the same numbers, with or without checkpointing (tests/test_feature_encoder.py). `GemmFeatureEncoder` never
    asks for that gradient; the hook is for transformers' encoder (group norm, CUDA, ``--no-gemm-feature-encoder``)."""
    first = model.wav2vec2.feature_extractor.conv_layers[0]
    if not getattr(first, "_fedw2v_detaches_audio", False):
        first.register_forward_pre_hook(_detach_audio)
        first._fedw2v_detaches_audio = True


def _detach_audio(module: nn.Module, args: tuple) -> tuple:
    return (args[0].detach(), *args[1:])
