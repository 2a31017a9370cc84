"""Training steps of transformers' feature encoder with and without the gradient of the input audio.

In training, transformers' `Wav2Vec2FeatureEncoder` marks the audio as requiring a gradient, so autograd runs
the first convolution's backward for the audio too, which nothing reads. `fedw2v.feature_encoder.
skip_audio_gradient` (installed by `local_train`) hands that layer the audio detached. This script measures what
that saves on a random-init wav2vec2-base (group-norm encoder, which fedw2v trains through transformers' encoder;
``--model tiny``: the tiny preset): the first layer's forward + backward alone, and a whole training step
(forward, backward, clip, AdamW), each side alternating in one process (both inside
`fedw2v.heap.keep_freed_memory`, as `local_train` runs), with the same seeds, so both sides draw the same dropout
and time masks. It checks that both sides' gradients are equal bit for bit, then reports medians over
``--repeat``.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/audio_gradient.py [--model base] [--threads 2] [--repeat 6] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("base", "tiny"), default="base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    from fedw2v.feature_encoder import skip_audio_gradient
    from fedw2v.heap import keep_freed_memory
    from fedw2v.model import tiny_config

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    config = Wav2Vec2Config(vocab_size=40) if args.model == "base" else tiny_config(vocab_size=40)
    stock = Wav2Vec2ForCTC(config).train()
    skipping = copy.deepcopy(stock)
    skip_audio_gradient(skipping)
    sides = {name: (model, torch.optim.AdamW(model.parameters(), 1e-4))
             for name, model in (("audio gradient", stock), ("skipped", skipping))}
    audio = torch.randn(args.batch, int(16000 * args.seconds))
    labels = torch.randint(1, 40, (args.batch, 10))

    def backward(model) -> None:
        torch.manual_seed(1)
        np.random.seed(1)
        model(audio, labels=labels).loss.backward()

    def step(model, optimizer) -> None:
        backward(model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def first_layer(model) -> None:
        out = model.wav2vec2.feature_extractor.conv_layers[0](audio[:, None].requires_grad_())
        out.backward(torch.ones_like(out))

    times: dict[str, dict[str, list[float]]] = {name: {"first layer": [], "step": []} for name in sides}
    with keep_freed_memory():
        for model, _ in sides.values():  # the same gradients, bit for bit
            backward(model)
        pairs = zip(stock.parameters(), skipping.parameters())
        assert all(a.grad is None or torch.equal(a.grad, b.grad) for a, b in pairs), "gradients differ"
        for model, optimizer in sides.values():  # warm-up
            optimizer.zero_grad(set_to_none=True)
            step(model, optimizer)
        for _ in range(args.repeat):
            for name, (model, optimizer) in sides.items():
                for what, run in (("first layer", lambda: first_layer(model)),
                                  ("step", lambda: step(model, optimizer))):
                    t = time.perf_counter()
                    run()
                    times[name][what].append(time.perf_counter() - t)
                model.zero_grad(set_to_none=True)
    medians = {name: {what: statistics.median(v) for what, v in d.items()} for name, d in times.items()}
    name = "wav2vec2-base" if args.model == "base" else "tiny preset"
    print(f"{name}, batch {args.batch} x {args.seconds} s, {args.threads} thread(s), median of {args.repeat}:")
    print("| | first layer fwd+bwd | training step |\n|---|---|---|")
    for name, m in medians.items():
        print(f"| {name} | {m['first layer'] * 1000:.0f} ms | {m['step']:.2f} s |")
    saved = medians["audio gradient"]["step"] - medians["skipped"]["step"]
    print(f"step time saved: {saved * 1000:.0f} ms ({saved / medians['audio gradient']['step']:.1%})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "times": times, "medians": medians}, f, indent=2)


if __name__ == "__main__":
    main()
