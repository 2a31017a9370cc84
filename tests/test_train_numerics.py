"""What local training computes: the fp32 default bit for bit as the loop before its split and speed work, with
either feature encoder (`--gemm-feature-encoder`, the default, or transformers'), either positional convolution
backward and either Adam kernel (`--fast-pos-conv` and `--fused-optimizer`, the defaults, or transformers' and
torch's per-parameter loop), and bf16 autocast on the CPU where the CPU has bf16 instructions (refused
elsewhere)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from fedw2v.batching import utterances_from_manifest
from fedw2v.config.train import recipe
from fedw2v.device import cpu_bf16_feature, resolve_precision
from fedw2v.errors import EnvironmentProblem
from fedw2v.model import load_model
from fedw2v.train import local_train


@pytest.fixture(scope="module")
def train_utts(asr_corpus):
    return utterances_from_manifest(asr_corpus[0], split="train")


@pytest.fixture(scope="module")
def dev_utts(asr_corpus):
    return utterances_from_manifest(asr_corpus[0], split="dev")


def _fresh(utts):
    return load_model("tiny", [u.text for u in utts], seed=0)


def reference_train(model, processor, utts, config, dev=None) -> int:
    """The oracle: `local_train`'s loop as it was before it was split (fedw2v 2a0b673; CPU, fp32, no resume),
    written out plainly. Returns the optimizer steps taken."""
    from fedw2v import positional_conv
    from fedw2v.batching import BucketBatchSampler, filter_by_duration
    from fedw2v.model import min_train_samples, receptive_field
    from fedw2v.train import (Collator, NewBob, SegmentDataset, _numpy_seeded, evaluate_loss, param_groups,
                              set_feature_encoder_frozen, use_gemm_feature_encoder)

    torch.set_flush_denormal(True)
    kept = filter_by_duration(utts, config.min_seconds, config.max_seconds)[0]
    dev_kept = filter_by_duration(dev, config.min_seconds, config.max_seconds)[0] if dev else []
    # added since: which feature encoder, which positional convolution's backward, which optimizer kernel
    use_gemm_feature_encoder(model, config.gemm_feature_encoder)
    if config.fast_pos_conv:
        positional_conv.install(model)
    set_feature_encoder_frozen(model, config.freeze_feature_encoder)
    sampler = BucketBatchSampler([u.duration for u in kept], config.max_batch_seconds, config.max_batch_size,
                                 shuffle=True, seed=config.seed)
    collate = Collator(processor.feature_extractor, min_train_samples(model.config), receptive_field(model.config))
    loader = torch.utils.data.DataLoader(SegmentDataset(kept, processor.tokenizer, cache=True),
                                         batch_sampler=sampler, collate_fn=collate)
    groups = param_groups(model, config)
    opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=config.lr_encoder, weight_decay=config.weight_decay,
                        fused=True if config.fused_optimizer else None)
    params = [p for g in groups for p in g["params"]]
    newbob = {"encoder": NewBob(config.newbob_factor_encoder, config.newbob_threshold),
              "head": NewBob(config.newbob_factor_head, config.newbob_threshold)}
    scale, steps = {"encoder": 1.0, "head": 1.0}, 0
    with torch.random.fork_rng(devices=[]), _numpy_seeded(config.seed):
        torch.manual_seed(config.seed)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        for epoch in range(config.epochs):
            sampler.set_epoch(epoch)
            batches, pending = len(sampler), 0
            for b, batch in enumerate(loader, start=1):
                batch.pop("audio_seconds")
                loss = model(**batch).loss
                if not torch.isfinite(loss.detach()):
                    optimizer.zero_grad(set_to_none=True)
                    pending = 0
                else:
                    (loss / config.grad_accum_steps).backward()
                    pending += 1
                if pending and (pending == config.grad_accum_steps or b == batches):
                    pending = 0
                    norm = torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
                    if torch.isfinite(norm):
                        warm = min(1.0, (steps + 1) / config.warmup_steps) if config.warmup_steps else 1.0
                        for g in optimizer.param_groups:
                            g["lr"] = g["base_lr"] * scale[g["name"]] * warm
                        optimizer.step()
                        steps += 1
                    optimizer.zero_grad(set_to_none=True)
            dev_loss = evaluate_loss(model, processor, dev_kept, config, "cpu") if dev_kept else None
            if config.newbob and dev_loss is not None and math.isfinite(dev_loss):
                scale = {name: nb.step(dev_loss) for name, nb in newbob.items()}
    return steps


CASES = {
    # the tiny recipe's AdamW with warm-up, gradient accumulation over a partial window, a clip that bites
    "adamw-accumulate-warmup-clip": (dict(grad_accum_steps=2, warmup_steps=3, clip_norm=0.5, max_batch_size=2,
                                          epochs=2), "tiny", False),
    # the paper's Adam (L2 weight decay), a frozen CNN, NewBob annealing on the dev loss every epoch
    "adam-newbob-frozen-cnn": (dict(freeze_feature_encoder=True, newbob_threshold=10.0, weight_decay=0.01,
                                    max_batch_size=4, epochs=2), "paper", True),
    # transformers' convolutional feature encoder (--no-gemm-feature-encoder), trained
    "transformers-feature-encoder": (dict(gemm_feature_encoder=False, max_batch_size=4, epochs=1), "tiny", False),
    # transformers' positional convolution backward and torch's per-parameter Adam (what pretrain_tiny runs)
    "unfused-transformers-kernels": (dict(gemm_feature_encoder=False, fast_pos_conv=False, fused_optimizer=False,
                                          max_batch_size=4, epochs=1), "tiny", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fp32_local_train_equals_the_loop_before_the_split_bit_for_bit(case, train_utts, dev_utts):
    overrides, name, with_dev = CASES[case]
    config = recipe(name, device="cpu", seed=4, **overrides)
    dev = dev_utts if with_dev else None
    ours, ref = _fresh(train_utts), _fresh(train_utts)
    metrics = local_train(ours.model, ours.processor, train_utts, config, dev=dev)
    steps = reference_train(ref.model, ref.processor, train_utts, config, dev=dev)
    assert metrics.steps == steps > 0 and metrics.precision == "fp32"
    if with_dev:
        assert metrics.lr_head == pytest.approx(config.lr_head * 0.8 ** (config.epochs - 1))  # NewBob annealed
    a, b = ours.model.state_dict(), ref.model.state_dict()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ from the reference loop: {different[:5]}"


def test_precision_on_the_cpu_bf16_only_with_bf16_instructions():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp32"  # no fp16 training on the CPU, as before
    assert resolve_precision("bf16", "cuda:0", lambda: None) == "bf16"  # CUDA: as asked
    assert resolve_precision("fp16", "cuda") == "fp16"
    assert resolve_precision("bf16", "cpu", lambda: "avx512_bf16") == "bf16"
    with pytest.raises(EnvironmentProblem) as err:
        resolve_precision("bf16", "cpu", lambda: None)
    text = str(err.value)
    assert "\n" not in text and "no bf16 instructions (avx512_bf16 or amx_bf16)" in text and "--precision fp32" in text


def test_bf16_local_train_on_the_cpu_autocasts_where_supported_and_is_refused_elsewhere(train_utts, monkeypatch):
    config = replace(recipe("tiny", epochs=1, max_batch_size=3, device="cpu"), precision="bf16")
    if cpu_bf16_feature():
        loaded = _fresh(train_utts)
        dtypes = set()
        loaded.model.lm_head.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
        metrics = local_train(loaded.model, loaded.processor, train_utts, config)
        assert metrics.precision == "bf16" and metrics.steps == 2 and math.isfinite(metrics.loss)
        assert dtypes == {torch.bfloat16}  # autocast ran the head's matmul in bf16
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in loaded.model.parameters())
        fp32 = _fresh(train_utts)
        local_train(fp32.model, fp32.processor, train_utts, replace(config, precision="fp32"))
        assert not torch.equal(fp32.model.lm_head.weight, loaded.model.lm_head.weight)
    monkeypatch.setattr("fedw2v.device.cpu_bf16_feature", lambda: None)  # a CPU without bf16 instructions
    loaded = _fresh(train_utts)
    before = loaded.model.lm_head.weight.detach().clone()
    with pytest.raises(EnvironmentProblem, match="this CPU has no bf16 instructions"):
        local_train(loaded.model, loaded.processor, train_utts, config)
    assert torch.equal(before, loaded.model.lm_head.weight)  # refused before anything ran


def test_cpu_bf16_feature_agrees_with_the_cpu_flags():
    from fedw2v.device import _cpuinfo_flags

    flags = _cpuinfo_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this system")
    expected = next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)
    assert cpu_bf16_feature() == expected
