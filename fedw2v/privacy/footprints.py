"""Hidden states and footprints of models on the indicator set.

The footprint of a model m against the global model g: for every indicator frame t and layer l,
Δ_l(t) = h_l^m(t) − h_l^g(t); over all valid frames of all indicator utterances, the per-dimension mean and
standard deviation of Δ_l, concatenated (layers × 2 × hidden floats). Layers: the encoder input
(``hidden_states[0]``) and the output of every transformer block.

Efficiency: the global model's hidden states on the indicator set are computed once per round
(`ReferenceStates`) and kept as float32 arrays, one ``(layers, frames, hidden)`` array per utterance, i.e.
frames × hidden × layers × 4 bytes in all (64 TED-LIUM dev utterances of ~11 s ≈ 36k frames: 3.6 GB for
wav2vec2-large, 25 layers × 1024; 0.01 GB for the ``tiny`` preset). Each further model costs one forward pass
per length-bucketed batch with all hidden states (eval mode, no gradients); padded frames never count (the
attention mask and the frame count of each utterance's own length). Models whose feature encoder normalises
over time (``feat_extract_norm="group"``, no attention mask) are run one utterance at a time, since padding
would change their outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fedw2v.audio import SAMPLE_RATE
from fedw2v.model import eval_mode
from fedw2v.privacy.store import FORMAT

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from fedw2v.privacy.indicator import Indicator

MAX_BATCH_SECONDS = 60.0  # padded audio per indicator batch at most (longest item x batch size)
MAX_BATCH_SIZE = 16  # indicator utterances per batch at most


def _base(model: Any) -> Any:
    """The wav2vec2 encoder of a CTC model (or the encoder itself)."""
    return getattr(model, "wav2vec2", model)


def _model_device(model: Any) -> str:
    return str(next(model.parameters()).device)


def _uses_mask(processor: Any, model: Any) -> bool:
    fe = processor.feature_extractor
    return bool(getattr(fe, "return_attention_mask", False)) and _base(model).config.feat_extract_norm == "layer"


def _layer_names(num_blocks: int) -> list[str]:
    return ["input"] + [f"block {i}" for i in range(1, num_blocks + 1)]


def _batches(indicator: Indicator, use_mask: bool, max_batch_seconds: float, max_batch_size: int) -> list[list[int]]:
    from fedw2v.batching import bucket_batches

    durations = [len(a) / SAMPLE_RATE for a in indicator.audio]
    size = max_batch_size if use_mask else 1
    return bucket_batches(durations, max_batch_seconds, size, shuffle=False)


def _forward(model: Any, processor: Any, audio: Sequence[np.ndarray], device: str, use_mask: bool):
    """All hidden states of one batch: (layers, batch, frames, hidden) tensor and each item's valid frames.

    Each utterance is normalised on its own (as unbatched), then zero-padded; the attention mask marks its
    samples, and its valid frames are those of its own length."""
    import numpy as np
    import torch

    from fedw2v.model import receptive_field

    base = _base(model)
    fe = processor.feature_extractor
    rf = receptive_field(base.config)
    items = []
    for a in audio:
        a = a if len(a) >= rf else np.pad(a, (0, rf - len(a)))
        x = fe(a, sampling_rate=fe.sampling_rate, return_tensors="np")["input_values"][0]
        items.append(np.asarray(x, dtype=np.float32))
    lengths = [len(x) for x in items]
    width = max(lengths)
    values = np.zeros((len(items), width), dtype=np.float32)
    mask = np.zeros((len(items), width), dtype=np.int64)
    for i, x in enumerate(items):
        values[i, : len(x)] = x
        mask[i, : len(x)] = 1
    kwargs = {"attention_mask": torch.from_numpy(mask).to(device)} if use_mask else {}
    out = base(torch.from_numpy(values).to(device), output_hidden_states=True, **kwargs)
    hidden = torch.stack(list(out.hidden_states))
    frames = base._get_feat_extract_output_lengths(torch.tensor(lengths)).tolist()
    return hidden, [int(f) for f in frames]


class ReferenceStates:
    """The global model's hidden states on the indicator set, computed once per round.

    ``states[i]`` is utterance i's float32 array (layers, frames, hidden) on the CPU: frames × hidden × layers ×
    4 bytes in all (`nbytes`). ``batches`` fixes the batch composition every footprint reuses."""

    def __init__(self, indicator: Indicator, states: list[np.ndarray], batches: list[list[int]], use_mask: bool,
                 layers: list[str], hidden_size: int):
        self.indicator = indicator
        self.states = states
        self.batches = batches
        self.use_mask = use_mask
        self.layers = layers
        self.hidden_size = hidden_size

    @classmethod
    def compute(
        cls, model: Any, processor: Any, indicator: Indicator, device: str | None = None, *,
        max_batch_seconds: float = MAX_BATCH_SECONDS, max_batch_size: int = MAX_BATCH_SIZE,
    ) -> ReferenceStates:
        """Run ``model`` (eval mode, no gradients) over the indicator set in length-bucketed batches and keep
        every layer's hidden states of every valid frame. ``device``: where to run (the model is moved there);
        None: where the model is."""
        if not indicator.utterances:
            raise ValueError("empty indicator set")
        device = _run_device(model, device)
        use_mask = _uses_mask(processor, model)
        batches = _batches(indicator, use_mask, max_batch_seconds, max_batch_size)
        states: list[Any] = [None] * len(indicator.utterances)
        with eval_mode(model):
            for batch in batches:
                hidden, frames = _forward(model, processor, [indicator.audio[i] for i in batch], device, use_mask)
                for j, i in enumerate(batch):
                    states[i] = hidden[:, j, : frames[j]].to("cpu", copy=True).numpy()
        cfg = _base(model).config
        return cls(indicator, states, batches, use_mask, _layer_names(cfg.num_hidden_layers), cfg.hidden_size)

    @property
    def frames(self) -> int:
        return sum(s.shape[1] for s in self.states)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.states)

    def meta(self) -> dict[str, Any]:
        """What stored footprints record about how they were made (`write_footprints`' ``meta``)."""
        return footprint_meta(self.indicator, self.layers, self.hidden_size, self.frames)


def footprint_meta(indicator: Indicator, layers: list[str], hidden_size: int, frames: int) -> dict[str, Any]:
    """The meta stored with footprints: the indicator set (ids, split, manifest, frames) and the model's layers."""
    return {
        "format": FORMAT,
        "indicator": {"manifest": indicator.source, "split": indicator.split, "utt_ids": indicator.utt_ids,
                      "speakers": indicator.speakers, "frames": frames},
        "layers": list(layers),
        "hidden_size": int(hidden_size),
        "dim": 2 * int(hidden_size),
    }


def indicator_frames(model: Any, indicator: Indicator) -> int:
    """Valid frames the model makes of the indicator set (without running it)."""
    import torch

    from fedw2v.model import receptive_field

    base = _base(model)
    rf = receptive_field(base.config)
    lengths = torch.tensor([max(len(a), rf) for a in indicator.audio])
    return int(base._get_feat_extract_output_lengths(lengths).sum())


def _run_device(model: Any, device: str | None) -> str:
    from fedw2v.device import resolve_device

    if device is None:
        return _model_device(model)
    device = resolve_device(device)
    model.to(device)
    return device


def footprint(model: Any, processor: Any, reference: ReferenceStates, device: str | None = None) -> np.ndarray:
    """(layers, 2 * hidden) float32: rows = [encoder input, block 1 .. block N]; per row the per-dimension mean
    then standard deviation, over all valid frames of all indicator utterances, of h_model − h_reference.

    One forward pass per reference batch (the same batches, so the same padding), eval mode, no gradients;
    sums in float64. ``device`` as in `ReferenceStates.compute`."""
    import torch

    device = _run_device(model, device)
    cfg = _base(model).config
    if cfg.num_hidden_layers + 1 != len(reference.layers) or cfg.hidden_size != reference.hidden_size:
        raise ValueError(
            f"model has {cfg.num_hidden_layers} blocks of {cfg.hidden_size}, the reference states "
            f"{len(reference.layers) - 1} of {reference.hidden_size}"
        )
    layers, hidden = len(reference.layers), reference.hidden_size
    total = torch.zeros(layers, hidden, dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    count = 0
    ind = reference.indicator
    with eval_mode(model):
        for batch in reference.batches:
            states, frames = _forward(model, processor, [ind.audio[i] for i in batch], device, reference.use_mask)
            for j, i in enumerate(batch):
                ref = reference.states[i]
                if frames[j] != ref.shape[1]:
                    raise ValueError(f"{ind.utterances[i].utt_id}: {frames[j]} frames, reference has {ref.shape[1]}")
                delta = (states[:, j, : frames[j]] - torch.from_numpy(ref).to(device)).double()
                total += delta.sum(dim=1)
                squares += (delta * delta).sum(dim=1)
                count += frames[j]
    mean = total / count
    std = torch.sqrt(torch.clamp(squares / count - mean * mean, min=0.0))
    return torch.cat([mean, std], dim=1).float().cpu().numpy()


def model_meta(model: Any, indicator: Indicator) -> dict[str, Any]:
    """`footprint_meta` of the footprints ``model``'s variants make on ``indicator`` (the model is not run)."""
    cfg = _base(model).config
    return footprint_meta(indicator, _layer_names(cfg.num_hidden_layers), cfg.hidden_size,
                          indicator_frames(model, indicator))


__all__ = ["ReferenceStates", "footprint", "footprint_meta", "indicator_frames", "model_meta"]
