"""Local training: one client's (or the central) fine-tuning of a CTC model on a list of utterances.

`local_train` is the paper's recipe (../shared/REFERENCE.md §1) with its defaults: Adam, learning rate 1e-4 for
the wav2vec2 encoder and 1e-3 for the CTC head, NewBob annealing on the dev loss (factors 0.9 / 0.8, threshold
0.0025), gradient-norm clip 5, fp32, the whole model trained, 20 epochs, batches of 4, utterances of 0.1-10 s.
Every piece is an option of `TrainConfig` (optimizer, learning rates, warm-up, frozen feature encoder,
gradient accumulation, bf16/fp16 autocast and gradient checkpointing on CUDA, bf16 autocast on CPUs with bf16
instructions), so a recipe that learns a random-init model from scratch (`TINY_RECIPE`) is the same code.

Its parts: `train_loader` (the data: cached audio, length buckets, padding), `Stepper` (the optimizer, the
learning rates and one step: accumulate, clip, scale, skip) and `_Run` (an epoch, and its end: dev loss,
NewBob). The fp32 default computes bit for bit what the loop did before it was split (tests/test_train_numerics).

It builds nothing and writes nothing: the caller owns the model (the federated clients load weights into one
model object per process and call this for each round). The optimizer and the schedules start fresh on every
call, as in the paper's code. A batch whose loss (or gradient) is not finite is skipped and counted; it never
reaches the weights.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fedw2v.config.train import TrainConfig
from fedw2v.device import resolve_device, resolve_precision
from fedw2v.heap import keep_freed_memory
from fedw2v.train_state import TrainState

if TYPE_CHECKING:  # pragma: no cover
    from fedw2v.batching import Utterance

HEAD_PREFIX = "lm_head."


@dataclass
class TrainProgress:
    epoch: int  # 0-based
    epochs: int
    batch: int  # batches done in this epoch
    batches: int  # batches per epoch
    steps: int  # optimizer steps so far
    loss: float  # mean training loss of this epoch so far
    audio_seconds_per_second: float  # throughput since the start


@dataclass
class TrainMetrics:
    samples: int  # training utterances after the duration filter (the FedAvg weight)
    filtered: int  # utterances dropped by the duration filter
    steps: int = 0  # optimizer steps taken
    batches: int = 0  # batches run, skipped ones included
    samples_seen: int = 0  # utterances processed over all epochs
    skipped_batches: int = 0  # batches whose loss or gradient was not finite (never applied)
    epoch_loss: list[float] = field(default_factory=list)  # mean training loss per epoch
    dev_loss: list[float | None] = field(default_factory=list)  # dev loss after each epoch (None: no dev data)
    lr_encoder: float = 0.0  # learning rates at the end (after NewBob)
    lr_head: float = 0.0
    seconds: float = 0.0  # wall time
    audio_seconds: float = 0.0  # audio processed over all epochs
    device: str = "cpu"
    precision: str = "fp32"  # what was actually used

    @property
    def loss(self) -> float | None:
        return self.epoch_loss[-1] if self.epoch_loss else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class NewBob:
    """SpeechBrain's NewBob: multiply by ``factor`` when the relative improvement is below ``threshold``."""

    def __init__(self, factor: float, threshold: float, patience: int = 0):
        self.factor = factor
        self.threshold = threshold
        self.patience = patience
        self.wait = patience
        self.scale = 1.0
        self.previous: float | None = None

    def step(self, metric: float) -> float:
        if self.previous is not None and self.previous != 0:
            improvement = (self.previous - metric) / self.previous
            if improvement < self.threshold:
                if self.wait == 0:
                    self.scale *= self.factor
                    self.wait = self.patience
                else:
                    self.wait -= 1
        self.previous = metric
        return self.scale


class SegmentDataset:
    """Items (audio, label ids) for a torch DataLoader: audio read from its source file, or from memory."""

    def __init__(self, utterances: Sequence[Utterance], tokenizer: Any, cache: bool):
        from fedw2v.audio import read_segment

        self.utterances = list(utterances)
        self.labels = [tokenizer(u.text)["input_ids"] for u in self.utterances]
        self.audio = [read_segment(u.path, u.start, u.end) for u in self.utterances] if cache else None

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int):
        from fedw2v.audio import read_segment

        if self.audio is not None:
            return self.audio[i], self.labels[i]
        u = self.utterances[i]
        return read_segment(u.path, u.start, u.end), self.labels[i]


class Collator:
    """Pads audio (feature extractor: normalisation, attention mask) and labels (-100, ignored by the loss)."""

    def __init__(self, feature_extractor: Any, min_samples: int = 0, min_item_samples: int = 0):
        self.fe = feature_extractor
        self.min_samples = min_samples  # a batch shorter than this is padded (attention-masked) up to it
        self.min_item_samples = min_item_samples  # an item shorter than this (one frame) is zero-padded

    def __call__(self, items):
        import numpy as np
        import torch

        need = self.min_item_samples
        audios = [a if len(a) >= need else np.pad(a, (0, need - len(a))) for a, _ in items]
        short = max(len(a) for a in audios) < self.min_samples
        feats = self.fe(
            audios,
            sampling_rate=self.fe.sampling_rate,
            padding="max_length" if short else True,
            max_length=self.min_samples if short else None,
            return_tensors="pt",
            return_attention_mask=bool(getattr(self.fe, "return_attention_mask", False)),
        )
        width = max(len(lab) for _, lab in items)
        labels = torch.full((len(items), max(1, width)), -100, dtype=torch.long)
        for i, (_, lab) in enumerate(items):
            labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        batch = {"input_values": feats["input_values"], "labels": labels}
        if "attention_mask" in feats:
            batch["attention_mask"] = feats["attention_mask"]
        batch["audio_seconds"] = sum(len(a) for a in audios) / self.fe.sampling_rate
        return batch


def set_feature_encoder_frozen(model: Any, frozen: bool) -> None:
    """Freeze (or unfreeze) the CNN feature encoder; idempotent, so one model object serves many calls."""
    encoder = model.wav2vec2.feature_extractor
    for p in encoder.parameters():
        p.requires_grad = not frozen
    encoder._requires_grad = not frozen


def use_gemm_feature_encoder(model: Any, on: bool) -> None:
    """`fedw2v.feature_encoder`'s matrix-product feature encoder in ``model`` (on), or transformers' (off)."""
    from fedw2v import feature_encoder

    feature_encoder.install(model) if on else feature_encoder.uninstall(model)


def _prepare_model(model: Any, config: TrainConfig, device: str) -> None:
    """``model`` on ``device`` with the feature encoder, positional convolution, freezing and checkpointing that
    ``config`` asks for."""
    from fedw2v import feature_encoder, positional_conv

    cuda = device.startswith("cuda")
    model.to(device)
    use_gemm_feature_encoder(model, not cuda and config.gemm_feature_encoder)
    (positional_conv.install if not cuda and config.fast_pos_conv else positional_conv.uninstall)(model)
    feature_encoder.skip_audio_gradient(model)
    set_feature_encoder_frozen(model, config.freeze_feature_encoder)
    _set_checkpointing(model, cuda and config.gradient_checkpointing)


def _set_checkpointing(model: Any, on: bool) -> None:
    """Gradient (activation) checkpointing on or off, whatever a previous call left."""
    active = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    if on and not active:
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    elif active and not on:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


def param_groups(model: Any, config: TrainConfig) -> list[dict[str, Any]]:
    """Two optimizer groups: the encoder (lr_encoder) and the CTC head (lr_head); frozen parameters left out."""
    encoder, head = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if name.startswith(HEAD_PREFIX) else encoder).append(p)
    groups = []
    if encoder:
        groups.append({"params": encoder, "lr": config.lr_encoder, "name": "encoder", "base_lr": config.lr_encoder})
    if head:
        groups.append({"params": head, "lr": config.lr_head, "name": "head", "base_lr": config.lr_head})
    return groups


def train_loader(model: Any, processor: Any, utterances: Sequence[Utterance], config: TrainConfig,
                 pin_memory: bool = False) -> tuple[Any, Any]:
    """(loader, sampler): ``utterances`` (already filtered) as training batches. A torch DataLoader over
    `SegmentDataset` (audio decoded once and kept in memory when it is at most ``config.cache_audio_seconds``
    long), batches from `BucketBatchSampler` (length buckets re-drawn from the seed every epoch: call
    ``sampler.set_epoch``), padded by `Collator` to what the model needs at least."""
    import torch

    from fedw2v.batching import BucketBatchSampler
    from fedw2v.model import min_train_samples, receptive_field

    cache = config.cache_audio_seconds > 0 and sum(u.duration for u in utterances) <= config.cache_audio_seconds
    dataset = SegmentDataset(utterances, processor.tokenizer, cache)
    sampler = BucketBatchSampler(
        [u.duration for u in utterances], config.max_batch_seconds, config.max_batch_size, shuffle=True,
        seed=config.seed,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=config.num_workers, pin_memory=pin_memory,
        collate_fn=Collator(
            processor.feature_extractor, min_train_samples(model.config), receptive_field(model.config)
        ),
    )
    return loader, sampler


class Stepper:
    """The optimizer side of local training: Adam(W) over the two parameter groups (`param_groups`), the fp16
    gradient scaler, the learning rates (NewBob scale x linear warm-up), autocast, and the optimizer step.

    Gradients of ``grad_accum_steps`` batches are summed (`accumulate`), then applied in one step (`step`):
    unscaled, clipped to ``clip_norm``. A batch whose loss is not finite drops the whole accumulation window;
    a window whose gradient norm is not finite is dropped too: neither ever reaches the weights.
    """

    def __init__(self, model: Any, config: TrainConfig, device: str, precision: str):
        import torch

        cuda = device.startswith("cuda")
        self.config = config
        self.groups = param_groups(model, config)
        opt_cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.groups, lr=config.lr_encoder, weight_decay=config.weight_decay,
                                 fused=config.fused_optimizer or None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and precision == "fp16")
        self.params = [p for g in self.groups for p in g["params"]]
        self.newbob = {"encoder": NewBob(config.newbob_factor_encoder, config.newbob_threshold),
                       "head": NewBob(config.newbob_factor_head, config.newbob_threshold)}
        self.scale = {"encoder": 1.0, "head": 1.0}  # NewBob's learning-rate multipliers
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.autocast_device = "cuda" if cuda else "cpu"
        self.pending = 0  # batches whose gradients are summed but not applied yet

    def loss(self, model: Any, batch: dict[str, Any]) -> Any:
        """The model's loss on one batch (under autocast in bf16/fp16)."""
        import torch

        with torch.autocast(device_type=self.autocast_device, dtype=self.amp_dtype,
                            enabled=self.amp_dtype is not None):
            return model(**batch).loss

    def accumulate(self, loss: Any) -> bool:
        """Add the gradients of one batch's loss; False (the accumulation window dropped) when it is not finite."""
        import torch

        if not torch.isfinite(loss.detach()):
            self.optimizer.zero_grad(set_to_none=True)  # drop this accumulation window entirely
            self.pending = 0
            return False
        self.scaler.scale(loss / self.config.grad_accum_steps).backward()
        self.pending += 1
        return True

    def due(self, last_batch: bool) -> bool:
        """Whether the summed gradients are to be applied now (a full window, or the epoch's last batch)."""
        return bool(self.pending) and (self.pending == self.config.grad_accum_steps or last_batch)

    def step(self, steps_done: int) -> bool:
        """Apply the summed gradients (unscaled, clipped); False (dropped) when their norm is not finite."""
        import torch

        self.pending = 0
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.clip_norm)
        if not torch.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
            return False
        self.set_lrs(steps_done)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return True

    def set_lrs(self, step: int) -> None:
        """Each group's learning rate for optimizer step ``step`` (0-based): base x NewBob scale x warm-up."""
        warmup = self.config.warmup_steps
        warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * self.scale[g["name"]] * warm

    def anneal(self, dev_loss: float | None) -> None:
        """NewBob on this epoch's dev loss (when enabled and the loss is finite)."""
        if self.config.newbob and dev_loss is not None and math.isfinite(dev_loss):
            self.scale = {name: nb.step(dev_loss) for name, nb in self.newbob.items()}


def local_train(
    model: Any,
    processor: Any,
    utterances: Sequence[Utterance],
    config: TrainConfig = TrainConfig(),
    dev: Sequence[Utterance] | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    on_epoch: Callable[[int, TrainMetrics], None] | None = None,
    on_state: Callable[[TrainState], None] | None = None,
    resume: TrainState | None = None,
) -> TrainMetrics:
    """Train ``model`` in place on ``utterances`` (and anneal on ``dev``); return what happened.

    ``progress`` is called after every batch, ``on_epoch(epoch, metrics so far)`` after every epoch (e.g. to
    log), then ``on_state(state)`` with everything needed to continue from there (`fedw2v.train_state`; e.g. to
    checkpoint: its optimizer tensors are the live ones, so save it before returning). ``resume``: such a state,
    with ``model`` holding the weights of that moment; training goes on from the next epoch and ends with the
    same weights as a run that never stopped. The model stays on the training device in train mode afterwards.
    Nothing is written to disk. bf16 on the CPU: `fedw2v.device.resolve_precision`."""
    import torch

    from fedw2v.batching import filter_by_duration

    t0 = time.perf_counter() - (resume.metrics.get("seconds", 0.0) if resume else 0.0)
    device = resolve_device(config.device)
    cuda, precision = device.startswith("cuda"), resolve_precision(config.precision, device)
    if not cuda:
        torch.set_flush_denormal(True)  # denormals slow CPU steps ~5x after warm-up (REFERENCE §5)
    kept, dropped = filter_by_duration(utterances, config.min_seconds, config.max_seconds)
    metrics = TrainMetrics(samples=len(kept), filtered=dropped, device=device, precision=precision,
                           lr_encoder=config.lr_encoder, lr_head=config.lr_head)
    if not kept:
        metrics.seconds = time.perf_counter() - t0
        return metrics
    dev_kept = filter_by_duration(dev, config.min_seconds, config.max_seconds)[0] if dev else []
    _prepare_model(model, config, device)
    loader, sampler = train_loader(model, processor, kept, config, pin_memory=cuda)
    run = _Run(model, processor, loader, sampler, Stepper(model, config, device, precision), metrics, config,
               device, dev_kept, t0, progress)
    # wav2vec2's time masking draws from numpy's global generator, dropout from torch's: seed both (and put
    # them back afterwards), so the same seed gives the same weights whichever process runs the call.
    with torch.random.fork_rng(devices=[torch.device(device)] if cuda else []), _numpy_seeded(config.seed), \
            keep_freed_memory(not cuda and config.keep_freed_memory):  # fedw2v.heap
        torch.manual_seed(config.seed)
        start = _restore(resume, run.stepper, metrics, device) if resume is not None else 0
        model.train()
        run.stepper.optimizer.zero_grad(set_to_none=True)
        for epoch in range(start, config.epochs):
            if run.done():
                break
            run.end_epoch(epoch, run.epoch(epoch))
            if on_epoch:
                on_epoch(epoch, metrics)
            if on_state:
                on_state(_snapshot(epoch + 1, run.stepper, metrics, device))
            if run.done():
                break
    metrics.seconds = time.perf_counter() - t0
    return metrics


@dataclass
class _Run:
    """One `local_train` call's moving parts, and its epochs."""

    model: Any
    processor: Any
    loader: Any
    sampler: Any
    stepper: Stepper
    metrics: TrainMetrics
    config: TrainConfig
    device: str
    dev: Sequence[Utterance]
    t0: float
    progress: Callable[[TrainProgress], None] | None

    def done(self) -> bool:
        return self.config.max_steps is not None and self.metrics.steps >= self.config.max_steps

    def epoch(self, epoch: int) -> float:
        """Train one epoch (up to ``max_steps``); returns its mean training loss (NaN: no finite batch)."""
        m, stepper = self.metrics, self.stepper
        self.sampler.set_epoch(epoch)
        batches = len(self.sampler)
        loss_sum, loss_n = 0.0, 0
        stepper.pending = 0
        for b, batch in enumerate(self.loader, start=1):
            m.batches += 1
            audio_s = batch.pop("audio_seconds")
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            n = batch["labels"].shape[0]
            loss = stepper.loss(self.model, batch)
            if stepper.accumulate(loss):
                loss_sum += float(loss.detach()) * n
                loss_n += n
                m.samples_seen += n
                m.audio_seconds += audio_s
            else:
                m.skipped_batches += 1
            if stepper.due(last_batch=b == batches):
                if stepper.step(m.steps):
                    m.steps += 1
                else:
                    m.skipped_batches += 1
            if self.progress:
                elapsed = max(time.perf_counter() - self.t0, 1e-9)
                self.progress(TrainProgress(epoch, self.config.epochs, b, batches, m.steps,
                                            loss_sum / loss_n if loss_n else math.nan, m.audio_seconds / elapsed))
            if self.done():
                break
        return loss_sum / loss_n if loss_n else math.nan

    def end_epoch(self, epoch: int, loss: float) -> None:
        """Record the epoch's loss and dev loss, anneal the learning rates (NewBob)."""
        m = self.metrics
        m.epoch_loss.append(loss)
        dev_loss = evaluate_loss(self.model, self.processor, self.dev, self.config, self.device) if self.dev else None
        m.dev_loss.append(dev_loss)
        self.stepper.anneal(dev_loss)
        m.lr_encoder = self.config.lr_encoder * self.stepper.scale["encoder"]
        m.lr_head = self.config.lr_head * self.stepper.scale["head"]
        m.seconds = time.perf_counter() - self.t0


def _snapshot(epochs_done: int, stepper: Stepper, metrics: TrainMetrics, device: str) -> TrainState:
    """The training state at the end of an epoch (inside `local_train`'s generator context)."""
    import copy

    import torch

    from fedw2v.train_state import numpy_state

    cuda = device.startswith("cuda")
    return TrainState(
        epochs_done=epochs_done,
        metrics=copy.deepcopy(metrics.to_dict()),
        newbob={name: {"scale": nb.scale, "wait": nb.wait, "previous": nb.previous}
                for name, nb in stepper.newbob.items()},
        optimizer=stepper.optimizer.state_dict(),
        scaler=stepper.scaler.state_dict() if stepper.scaler.is_enabled() else {},
        torch_rng=torch.get_rng_state(),
        cuda_rng=torch.cuda.get_rng_state(torch.device(device)) if cuda else None,
        numpy_rng=numpy_state(),
    )


def _restore(state: TrainState, stepper: Stepper, metrics: TrainMetrics, device: str) -> int:
    """Put a `_snapshot` back (optimizer, scaler, NewBob, metrics, generators); returns the next epoch."""
    import torch

    from fedw2v.train_state import set_numpy_state

    stepper.optimizer.load_state_dict(state.optimizer)
    if stepper.scaler.is_enabled() and state.scaler:
        stepper.scaler.load_state_dict(state.scaler)
    for name, nb in stepper.newbob.items():
        saved = state.newbob[name]
        nb.scale, nb.wait, nb.previous = saved["scale"], saved["wait"], saved["previous"]
        stepper.scale[name] = nb.scale
    for key, value in state.metrics.items():
        if key not in ("samples", "filtered", "device", "precision"):
            setattr(metrics, key, list(value) if isinstance(value, list) else value)
    torch.set_rng_state(state.torch_rng)
    if state.cuda_rng is not None and device.startswith("cuda"):
        torch.cuda.set_rng_state(state.cuda_rng, torch.device(device))
    set_numpy_state(state.numpy_rng)
    return state.epochs_done


@contextlib.contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    import numpy as np

    saved = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(saved)


def evaluate_loss(
    model: Any, processor: Any, utterances: Sequence[Utterance], config: TrainConfig, device: str | None = None
) -> float | None:
    """Mean CTC loss per utterance (eval mode, no gradients); None when no utterance has a finite loss."""
    import torch

    from fedw2v.batching import bucket_batches
    from fedw2v.model import eval_mode, receptive_field

    if not utterances:
        return None
    device = device or resolve_device(config.device)
    dataset = SegmentDataset(utterances, processor.tokenizer, cache=False)
    rf = receptive_field(model.config)
    collate = Collator(processor.feature_extractor, rf, rf)
    total, count = 0.0, 0
    with eval_mode(model):
        for idx in bucket_batches([u.duration for u in utterances], config.max_batch_seconds,
                                  config.max_batch_size, shuffle=False):
            batch = collate([dataset[i] for i in idx])
            batch.pop("audio_seconds")
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            if torch.isfinite(loss):
                total += float(loss) * len(idx)
                count += len(idx)
    return total / count if count else None


def greedy_cer(model: Any, processor: Any, utterances: Sequence[Utterance]) -> float:
    """Character error rate of greedy decoding on ``utterances`` (a quick learning check)."""
    from fedw2v.decode import Decoder
    from fedw2v.metrics import score

    hyps = Decoder(model, processor).decode_utterances(utterances)
    return score([u.text for u in utterances], hyps).cer
