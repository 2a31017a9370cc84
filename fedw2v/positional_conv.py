"""wav2vec2's convolutional positional embedding for CPU training, with a faster backward for its input.

The positional embedding is one grouped convolution over the transformer's input (kernel 128, 16 groups, stride 1,
"same" padding), then transformers' ``SamePad`` and a GELU. On the CPU, oneDNN's backward kernel for the gradient of
its input runs at about half the speed of its forward kernel for this shape (wav2vec2-base, batch 8: 268 ms against
139 ms at 2.7 s of audio, 2 threads; `benchmarks/cpu_kernels.py`, BENCHMARKS.md). For a stride-1 convolution that
gradient *is* a forward convolution of the output's gradient with the kernel flipped in time and its input and
output channels swapped within each group (padding ``k - 1 - p``), so `PositionalConv` computes it that way; the
forward pass and the gradients of the weight and bias are transformers' own calls, unchanged (the forward bit for
bit). The input's gradient equals transformers' to float rounding (tests/test_positional_conv.py). Under autocast
(``--precision bf16``) it casts as autocast does for a convolution and computes the gradients in that precision.

`PositionalConv` takes the place of ``model.wav2vec2.encoder.pos_conv_embed`` with the same ``conv`` (weight norm
included), ``padding`` and ``activation`` submodules, so parameter names, state dicts, freezing and federated
exchange are unchanged. `fedw2v.train.local_train` installs it for CPU training (``TrainConfig.fast_pos_conv``,
``--no-fast-pos-conv`` to keep transformers'); CUDA keeps cuDNN's kernels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class _GroupedConv(torch.autograd.Function):
    """``conv1d(x, weight, bias, padding, groups)`` (stride 1, no dilation) whose input gradient is a forward
    convolution (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int,
                groups: int) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # (--precision bf16) what autocast does for a convolution:
            dtype = torch.get_autocast_dtype(x.device.type)  # every tensor in the lower precision, so that the
            x, weight = x.to(dtype), weight.to(dtype)  # backward, which runs without autocast, gets them alike
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups, ctx.has_bias = padding, groups, bias is not None
        with torch.autocast(x.device.type, enabled=False):
            return nn.functional.conv1d(x, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        p, g = ctx.padding, ctx.groups
        out_channels, k = weight.shape[0], weight.shape[-1]
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        grad_x = grad_w = grad_b = None
        if want_x:
            grad_x = nn.functional.conv1d(grad, _flipped(weight, g), None, padding=k - 1 - p, groups=g)
        if want_w or want_b:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [out_channels] if ctx.has_bias else None, [1], [p], [1], False, [0], g,
                [False, want_w, want_b])
        return grad_x, grad_w, grad_b, None, None


def _flipped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel of the input's gradient: flipped in time, input and output channels swapped within each group."""
    out_channels, in_per_group, k = weight.shape
    return (weight.view(groups, out_channels // groups, in_per_group, k).transpose(1, 2).flip(-1)
            .reshape(groups * in_per_group, out_channels // groups, k))


class PositionalConv(nn.Module):
    """transformers' ``Wav2Vec2PositionalConvEmbedding`` (same submodules, same call: (batch, frames, channels)
    in and out) with `_GroupedConv` for its convolution."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.conv, self.padding, self.activation = original.conv, original.padding, original.activation
        self.original = [original]  # a list: not a submodule, so not in the state dict

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        h = _GroupedConv.apply(hidden_states.transpose(1, 2), conv.weight, conv.bias, conv.padding[0], conv.groups)
        return self.activation(self.padding(h)).transpose(1, 2)


def install(model: Any) -> bool:
    """Put a `PositionalConv` in the place of ``model``'s positional embedding (idempotent). False, and nothing
    changed, for anything but transformers' wav2vec2 one with a stride-1, zero-padded convolution."""
    encoder = model.wav2vec2.encoder
    current = encoder.pos_conv_embed
    if isinstance(current, PositionalConv):
        return True
    conv = getattr(current, "conv", None)
    if (type(current).__name__ != "Wav2Vec2PositionalConvEmbedding" or not isinstance(conv, nn.Conv1d)
            or conv.stride != (1,) or conv.dilation != (1,) or conv.padding_mode != "zeros"
            or not isinstance(conv.padding, tuple)):
        return False
    encoder.pos_conv_embed = PositionalConv(current)
    return True


def uninstall(model: Any) -> None:
    """Put transformers' positional embedding back (the same parameters), e.g. before training on CUDA."""
    encoder = model.wav2vec2.encoder
    if isinstance(encoder.pos_conv_embed, PositionalConv):
        encoder.pos_conv_embed = encoder.pos_conv_embed.original[0]
