"""The positional convolution's backward and the Adam(W) kernel, each against what it replaced, on the CPU.

At wav2vec2 sizes two pieces of a CPU training step run below this CPU's matrix-product speed:
- the positional convolution (kernel 128, 16 groups): oneDNN's kernel for the gradient of its input is about half
  as fast as its forward kernel; `fedw2v.positional_conv` computes that gradient as a forward convolution with the
  kernel flipped (``--fast-pos-conv``, on by default);
- torch's AdamW in its per-parameter form makes ~8 passes over the parameters and their state; the fused kernel
  (``--fused-optimizer``, on by default; transformers.Trainer's default too) makes one.

This script measures both on a random-init wav2vec2-base (95M parameters): transformers' positional embedding and
fedw2v's, forward + backward on a batch of 8 at ``--seconds`` (frames: 50 a second), alternating in one process
inside `fedw2v.heap.keep_freed_memory` (as `local_train` runs), after checking that the outputs are equal bit for
bit and the gradients to float rounding; then AdamW's step over the whole model's parameters, per-parameter and
fused, alternating. Medians over ``--repeat``.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/cpu_kernels.py [--threads 2] [--seconds 2.7,5] [--repeat 7]
        [--model base] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("base", "small"), default="base",
                        help="base: wav2vec2-base; small: a few-layer model for a quick check")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", default="2.7,5")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from fedw2v import positional_conv
    from fedw2v.heap import keep_freed_memory

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, conv_dim=(32,) * 7)
    config = Wav2Vec2Config(vocab_size=40, **(small if args.model == "small" else {}))
    model = Wav2Vec2ForCTC(config)
    theirs = model.wav2vec2.encoder.pos_conv_embed
    ours = copy.deepcopy(model)
    positional_conv.install(ours)
    ours = ours.wav2vec2.encoder.pos_conv_embed
    results = {"model": args.model, "threads": args.threads, "repeat": args.repeat, "pos_conv_ms": {}, "adamw_ms": {}}
    with keep_freed_memory(True):
        for seconds in (float(s) for s in args.seconds.split(",")):
            frames = int(seconds * 50)
            x, grad = torch.randn(8, frames, config.hidden_size), torch.randn(8, frames, config.hidden_size)
            check(theirs, ours, x, grad)
            times = alternate({"transformers": lambda: fwd_bwd(theirs, x, grad),
                               "fedw2v": lambda: fwd_bwd(ours, x, grad)}, args.repeat)
            results["pos_conv_ms"][seconds] = times
            results.setdefault("input_gradient_ms", {})[seconds] = input_gradient(ours.conv, x, args.repeat)
            print(f"positional convolution, 8 x {seconds:g} s, forward + backward: transformers "
                  f"{times['transformers']:.0f} ms, fedw2v {times['fedw2v']:.0f} ms; its input's gradient alone: "
                  + ", ".join(f"{k} {v:.0f} ms" for k, v in results["input_gradient_ms"][seconds].items()))
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        steps = {name: torch.optim.AdamW(params, lr=1e-4, fused=fused).step
                 for name, fused in (("per-parameter", None), ("fused", True))}
        results["adamw_ms"] = alternate(steps, args.repeat)
        print(f"AdamW step, {sum(p.numel() for p in params) / 1e6:.0f}M parameters: per-parameter "
              f"{results['adamw_ms']['per-parameter']:.0f} ms, fused {results['adamw_ms']['fused']:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def fwd_bwd(module, x, grad) -> None:
    h = x.clone().requires_grad_()
    module(h).backward(grad)
    module.zero_grad(set_to_none=True)


def input_gradient(conv, x, repeat: int) -> dict:
    """Median ms of the gradient of the convolution's input alone: oneDNN's backward kernel, and the forward
    convolution with the kernel flipped that `fedw2v.positional_conv` runs instead."""
    import torch

    from fedw2v.positional_conv import _flipped

    weight = conv.weight.detach()
    k, p, g = weight.shape[-1], conv.padding[0], conv.groups
    grad, inp = torch.randn(x.shape[0], weight.shape[0], x.shape[1] + 2 * p - k + 1), x.transpose(1, 2)
    return alternate({
        "backward kernel": lambda: torch.ops.aten.convolution_backward(
            grad, inp, weight, None, [1], [p], [1], False, [0], g, [True, False, False]),
        "forward kernel, flipped": lambda: torch.nn.functional.conv1d(
            grad, _flipped(weight, g), None, padding=k - 1 - p, groups=g),
    }, repeat)


def check(theirs, ours, x, grad) -> None:
    """Outputs equal bit for bit, gradients (input and parameters) to float rounding, or stop."""
    import torch

    got = []
    for module in (theirs, ours):
        h = x.clone().requires_grad_()
        out = module(h)
        out.backward(grad)
        got.append((out.detach(), [h.grad] + [p.grad.clone() for p in module.parameters()]))
        module.zero_grad(set_to_none=True)
    if not torch.equal(got[0][0], got[1][0]):
        raise SystemExit("the outputs differ")
    for a, b in zip(got[0][1], got[1][1]):
        if (a - b).abs().max() > 1e-5 * a.abs().max():
            raise SystemExit("the gradients differ beyond float rounding")


def alternate(sides: dict, repeat: int) -> dict:
    """Median milliseconds of each side's call over ``repeat`` rounds after one warm-up, the order alternating."""
    times: dict = {name: [] for name in sides}
    names = list(sides)
    for r in range(repeat + 1):
        for name in names if r % 2 else reversed(names):
            t = time.perf_counter()
            sides[name]()
            if r:
                times[name].append((time.perf_counter() - t) * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


if __name__ == "__main__":
    main()
