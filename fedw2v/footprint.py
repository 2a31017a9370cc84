"""Speaker footprints of exchanged models and the EER of the attack that uses them (../shared/REFERENCE.md §4).

The method (Tomashenko et al., ICASSP 2022; applied to federated wav2vec2 by the ICASSP 2023 study):

- **Indicator set**: a fixed list of utterances of speakers who are not among the analysed clients (default: the
  corpus dev split). Every model is run on the same set, so the analyst needs no client speech.
- **Footprint** of a model m against the global model g the clients started from: for every indicator frame t
  and layer l, Δ_l(t) = h_l^m(t) − h_l^g(t); over all valid frames of all indicator utterances, the
  per-dimension mean and standard deviation of Δ_l, concatenated: one vector of 2 × hidden floats per layer.
  Layers: the encoder input (feature projection + convolutional positional embedding, i.e. the input of the
  first transformer block, ``hidden_states[0]``) and the output of every transformer block.
- **Trials**, per round r: for each sampled client that succeeded and has a holdout, the *test* model is its
  uploaded update and the *enrollment* model is global_r (checkpoint ``round-(r-1)``) fine-tuned on its holdout
  with the run's local recipe. Score = cosine similarity of an enrollment and a test footprint, per layer; target
  trials pair one client's two models, non-target trials models of different clients. EER (%) per layer, per
  round and pooled over rounds (each round's scores standardised by its non-target scores first: a monotone
  change that leaves the round's EER as it is and puts rounds on one scale), with a bootstrap confidence
  interval. A round with fewer than 2 target trials is not measurable. A low EER means identity leaks.

Efficiency: the global model's hidden states on the indicator set are computed once per round
(`ReferenceStates`) and kept as float32 arrays, one ``(layers, frames, hidden)`` array per utterance, i.e.
frames × hidden × layers × 4 bytes in all (64 TED-LIUM dev utterances of ~11 s ≈ 36k frames: 3.6 GB for
wav2vec2-large, 25 layers × 1024; 0.01 GB for the ``tiny`` preset). Each further model costs one forward pass
per length-bucketed batch with all hidden states (eval mode, no gradients); padded frames never count (the
attention mask and the frame count of each utterance's own length). Models whose feature encoder normalises
over time (``feat_extract_norm="group"``, no attention mask) are run one utterance at a time, since padding
would change their outputs.

Storage, under the run directory (all writes atomic: temporary file + rename)::

    footprints/round-NNNN/test.safetensors     {"client-<id>": (layers, 2*hidden) float32}, meta in the header
    footprints/round-NNNN/test.json            the same meta, readable
    footprints/round-NNNN/enroll.safetensors   enrollment footprints (written by `analyse`, reused by reruns)
    updates/round-NNNN/client-<id>.safetensors a client's full uploaded weights (``simulate --save-updates``)

A footprint is layers × 2 × hidden float32: 25 × 2 × 1024 × 4 B = 200 KiB for wav2vec2-large.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.audio import SAMPLE_RATE
from fedw2v.errors import InputError
from fedw2v.model import eval_mode

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from fedw2v.batching import Utterance
    from fedw2v.manifest import Manifest

FORMAT = 1  # version of the stored footprint files
FOOTPRINTS = "footprints"
UPDATES = "updates"
KINDS = ("test", "enroll")
META_KEY = "fedw2v"
CLIENT_PREFIX = "client-"
MAX_BATCH_SECONDS = 60.0  # padded audio per indicator batch at most (longest item x batch size)
MAX_BATCH_SIZE = 16  # indicator utterances per batch at most
MIN_TARGETS = 2  # a round with fewer target trials is not measurable
ENROLL_SEED_TAG = 0x656E726F  # keeps enrollment seeds apart from the clients' own training seeds

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------------- indicator


@dataclass
class Indicator:
    """The fixed indicator set (the same for every model): utterances and their audio, read once."""

    utterances: list[Utterance]
    audio: list[np.ndarray]  # 16 kHz float32, one array per utterance
    source: str = ""  # the manifest it came from
    split: str = ""  # its corpus split
    excluded_speakers: tuple[str, ...] = ()  # speakers of the split left out (they are analysed clients)
    excluded_utterances: int = 0  # utterances of the split left out with them
    available: int = 0  # utterances of the split left after the exclusion (the first n are used)

    @property
    def utt_ids(self) -> list[str]:
        return [u.utt_id for u in self.utterances]

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    @property
    def seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE

    def describe(self) -> dict[str, Any]:
        return {
            "manifest": self.source, "split": self.split, "utterances": len(self.utterances),
            "seconds": round(self.seconds, 2), "speakers": self.speakers,
            "excluded_speakers": list(self.excluded_speakers), "excluded_utterances": self.excluded_utterances,
            "available": self.available,
        }


def _manifest_and_name(manifest: Manifest | str | os.PathLike, name: str | None) -> tuple[Manifest, str]:
    from fedw2v import manifest as mf

    if isinstance(manifest, (str, os.PathLike)):
        return mf.read(manifest), name or str(manifest)
    return manifest, name or f"manifest of {manifest.info.corpus_root}"


def load_indicator(
    manifest: Manifest | str | os.PathLike,
    split: str = "dev",
    n: int = 64,
    corpus_root: str | None = None,
    exclude_speakers: Iterable[str] = (),
    *,
    name: str | None = None,
) -> Indicator:
    """The rows of corpus split ``split``, speakers in ``exclude_speakers`` removed (and counted), sorted by
    utt_id, the first ``n``; their audio is read once. InputError (naming the manifest and split) when the split
    is empty or nothing is left. ``name`` names the manifest in messages (default: its path or corpus root)."""
    import pyarrow.compute as pc

    from fedw2v.audio import read_segment
    from fedw2v.batching import utterances_from_manifest

    if n < 1:
        raise ValueError("indicator utterances must be at least 1")
    m, label = _manifest_and_name(manifest, name)
    splits = sorted(set(m.table.column("split").to_pylist()))
    rows = m.table.filter(pc.equal(m.table.column("split"), split))
    if rows.num_rows == 0:
        raise InputError(
            f"{label}: no utterances in split {split!r} for the indicator set (splits: {', '.join(splits) or 'none'})",
            hint="choose another --indicator-split or --indicator manifest",
        )
    utts = utterances_from_manifest(m, split=split, corpus_root=corpus_root)
    excluded = set(exclude_speakers)
    kept = [u for u in utts if u.speaker not in excluded]
    dropped = sorted({u.speaker for u in utts if u.speaker in excluded})
    if not kept:
        raise InputError(
            f"{label}: all {len(utts)} utterances of split {split!r} belong to analysed clients' speakers "
            f"({', '.join(dropped[:5])}); the indicator set must come from other speakers",
            hint="name another --indicator manifest or --indicator-split",
        )
    kept.sort(key=lambda u: u.utt_id)
    chosen = kept[:n]
    audio = [read_segment(u.path, u.start, u.end) for u in chosen]
    return Indicator(chosen, audio, label, split, tuple(dropped), len(utts) - len(kept), len(kept))


def indicator_from_ids(
    manifest: Manifest | str | os.PathLike,
    utt_ids: Sequence[str],
    corpus_root: str | None = None,
    *,
    split: str = "",
    name: str | None = None,
) -> Indicator:
    """The indicator set of stored footprints, rebuilt from its utterance ids (in that order)."""
    from fedw2v.audio import read_segment
    from fedw2v.batching import utterances_from_manifest

    m, label = _manifest_and_name(manifest, name)
    by_id = {u.utt_id: u for u in utterances_from_manifest(m, corpus_root=corpus_root)}
    missing = [u for u in utt_ids if u not in by_id]
    if missing:
        raise InputError(
            f"{label}: lacks {len(missing)} of the {len(utt_ids)} indicator utterances the stored footprints were "
            f"computed on (e.g. {missing[0]})",
            hint="pass the manifest the run used with --indicator",
        )
    chosen = [by_id[u] for u in utt_ids]
    audio = [read_segment(u.path, u.start, u.end) for u in chosen]
    return Indicator(chosen, audio, label, split, (), 0, len(chosen))


def client_speakers(manifest: Manifest) -> dict[int, set[str]]:
    """{client id: its speakers} from a partitioned manifest."""
    ids = manifest.table.column("client_id").to_pylist()
    spk = manifest.table.column("speaker").to_pylist()
    out: dict[int, set[str]] = {}
    for cid, s in zip(ids, spk):
        if cid is not None:
            out.setdefault(int(cid), set()).add(s)
    return out


def run_indicator(config: Any, clients: Manifest | None = None) -> Indicator:
    """The indicator set of a federated run (a `SimulateConfig`): ``indicator_manifest`` (default: the clients
    manifest), ``indicator_split``, the first ``indicator_utterances`` by utt_id, every client's speakers
    excluded. The server and `analyse` both use this, so test and enrollment footprints share the set."""
    from fedw2v import manifest as mf

    clients = clients if clients is not None else mf.read(config.clients_manifest)
    path = config.indicator_manifest or config.clients_manifest
    source = clients if path == config.clients_manifest else mf.read(path)
    exclude = {s for speakers in client_speakers(clients).values() for s in speakers}
    return load_indicator(source, config.indicator_split, config.indicator_utterances,
                          config.corpus_root or None, exclude, name=str(path))


# ------------------------------------------------------------------------------------------ hidden states


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


# ------------------------------------------------------------------------------------------------- storage


def footprint_path(run_dir: str | os.PathLike, round_: int, kind: str) -> Path:
    from fedw2v.runs import checkpoint_name

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return Path(run_dir) / FOOTPRINTS / checkpoint_name(round_) / f"{kind}.safetensors"


def update_path(run_dir: str | os.PathLike, round_: int, client_id: int) -> Path:
    from fedw2v.runs import checkpoint_name

    return Path(run_dir) / UPDATES / checkpoint_name(round_) / f"{CLIENT_PREFIX}{int(client_id)}.safetensors"


def _save_safetensors_atomic(path: Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    import numpy as np
    from safetensors.numpy import save_file

    from fedw2v.atomic import atomic_file

    with atomic_file(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def _comparable(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in ("clients", "written")}


def write_footprints(
    run_dir: str | os.PathLike, round_: int, kind: str, footprints: Mapping[int, np.ndarray], meta: Mapping[str, Any],
    *, merge: bool = True,
) -> Path:
    """Store footprints of one round: ``footprints/round-NNNN/{kind}.safetensors`` (keys ``client-<id>``,
    float32) with ``meta`` (e.g. `ReferenceStates.meta`) in its header and, readable, in ``{kind}.json``.

    With ``merge`` (default), footprints already stored for other clients are kept when the stored meta equals
    ``meta`` (so one call per client, or a resumed round, adds to the file); otherwise the file is replaced.
    Both files are written atomically (temporary file, fsync, rename); the safetensors header is authoritative."""
    import numpy as np

    from fedw2v import runs

    path = footprint_path(run_dir, round_, kind)
    tensors = {f"{CLIENT_PREFIX}{int(c)}": np.asarray(v, dtype=np.float32) for c, v in footprints.items()}
    meta = {**dict(meta), "kind": kind, "round": int(round_)}
    if merge and path.is_file():
        old, old_meta = read_footprints(run_dir, round_, kind)
        if _comparable(old_meta) == _comparable(json.loads(json.dumps(meta))):
            tensors = {**{f"{CLIENT_PREFIX}{c}": v for c, v in old.items()}, **tensors}
    meta["clients"] = sorted(int(k[len(CLIENT_PREFIX):]) for k in tensors)
    meta["written"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _save_safetensors_atomic(path, tensors, {META_KEY: json.dumps(meta, sort_keys=True)})
    runs.write_json_atomic(path.with_suffix(".json"), meta)
    return path


def read_footprints(run_dir: str | os.PathLike, round_: int, kind: str) -> tuple[dict[int, np.ndarray], dict]:
    """({client id: (layers, 2*hidden) float32}, meta) of one round; InputError when there is no such file."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = footprint_path(run_dir, round_, kind)
    if not path.is_file():
        raise InputError(f"{path}: no {kind} footprints stored for round {round_}")
    try:
        with safe_open(str(path), framework="np") as fh:
            meta = json.loads((fh.metadata() or {}).get(META_KEY, "{}"))
        arrays = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- a damaged file: name it
        reason = str(exc).splitlines()[0] if str(exc) else repr(exc)
        raise InputError(f"{path}: cannot read footprints ({reason})") from None
    out = {}
    for key, value in arrays.items():
        if key.startswith(CLIENT_PREFIX):
            out[int(key[len(CLIENT_PREFIX):])] = value
    return dict(sorted(out.items())), meta


def write_update(run_dir: str | os.PathLike, round_: int, client_id: int, arrays: Mapping[str, Any]) -> Path:
    """A client's uploaded weights of one round: ``updates/round-NNNN/client-<id>.safetensors`` (atomic)."""
    import numpy as np

    tensors = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in arrays.items()}
    meta = {META_KEY: json.dumps({"format": FORMAT, "round": int(round_), "client": int(client_id)})}
    return _save_safetensors_atomic(update_path(run_dir, round_, client_id), tensors, meta)


def read_update(run_dir: str | os.PathLike, round_: int, client_id: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = update_path(run_dir, round_, client_id)
    if not path.is_file():
        raise InputError(f"{path}: no saved update")
    return load_file(str(path))


def saved_updates(run_dir: str | os.PathLike, round_: int) -> list[int]:
    """Client ids with a saved update in round ``round_``."""
    folder = update_path(run_dir, round_, 0).parent
    if not folder.is_dir():
        return []
    out = []
    for p in folder.glob(f"{CLIENT_PREFIX}*.safetensors"):
        try:
            out.append(int(p.name[len(CLIENT_PREFIX): -len(".safetensors")]))
        except ValueError:
            continue
    return sorted(out)


# ------------------------------------------------------------------------------------------ trials and EER


@dataclass
class Trials:
    """Cosine scores per layer: target (same client) and non-target (different clients) trials."""

    clients: list[int]  # clients with both an enrollment and a test footprint
    target: np.ndarray  # (layers, n_target)
    nontarget: np.ndarray  # (layers, n_nontarget)
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (enroll client, test client) of each non-target


def cosine_scores(enroll: Mapping[int, np.ndarray], test: Mapping[int, np.ndarray]) -> np.ndarray:
    """(layers, len(enroll), len(test)) cosine similarities of every pair, per layer (sorted client order).
    A zero footprint scores 0 against everything."""
    import numpy as np

    e = np.stack([np.asarray(enroll[c], dtype=np.float64) for c in sorted(enroll)], axis=1)  # (L, nE, D)
    t = np.stack([np.asarray(test[c], dtype=np.float64) for c in sorted(test)], axis=1)
    ne = np.linalg.norm(e, axis=-1, keepdims=True)
    nt = np.linalg.norm(t, axis=-1, keepdims=True)
    e = np.divide(e, ne, out=np.zeros_like(e), where=ne > 0)
    t = np.divide(t, nt, out=np.zeros_like(t), where=nt > 0)
    return np.einsum("led,ltd->let", e, t)


def make_trials(enroll: Mapping[int, np.ndarray], test: Mapping[int, np.ndarray]) -> Trials:
    """Target trials: each client with both footprints; non-target: every (enroll c, test c') with c != c'."""
    import numpy as np

    clients = sorted(set(enroll) & set(test))
    if not clients:
        empty = np.zeros((0, 0))
        return Trials([], empty, empty, [])
    scores = cosine_scores({c: enroll[c] for c in clients}, {c: test[c] for c in clients})
    n = len(clients)
    off = ~np.eye(n, dtype=bool)
    pairs = [(clients[i], clients[j]) for i in range(n) for j in range(n) if i != j]
    return Trials(clients, scores[:, np.arange(n), np.arange(n)], scores[:, off], pairs)


def _eer_rows(target: np.ndarray, nontarget: np.ndarray) -> np.ndarray:
    """EER (fraction) of each row of (B, n_target) and (B, n_nontarget) score arrays.

    Operating points: accept scores above a threshold placed between consecutive distinct scores (ties move
    together); the miss rate rises and the false-alarm rate falls along them. The EER is where the straight
    segment between the last point with miss < false alarm and the next one crosses miss = false alarm."""
    import numpy as np

    t = np.asarray(target, dtype=np.float64)
    f = np.asarray(nontarget, dtype=np.float64)
    rows, nt, nn = t.shape[0], t.shape[1], f.shape[1]
    scores = np.concatenate([t, f], axis=1)
    labels = np.concatenate([np.ones((rows, nt)), np.zeros((rows, nn))], axis=1)
    order = np.argsort(scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    lab = np.take_along_axis(labels, order, axis=1)
    miss = np.concatenate([np.zeros((rows, 1)), np.cumsum(lab, axis=1) / nt], axis=1)
    fa = np.concatenate([np.ones((rows, 1)), 1.0 - np.cumsum(1.0 - lab, axis=1) / nn], axis=1)
    end = np.ones((rows, nt + nn + 1), dtype=bool)
    end[:, 1:-1] = s[:, 1:] != s[:, :-1]  # a point exists only after the last of equal scores
    idx = np.maximum.accumulate(np.where(end, np.arange(nt + nn + 1), 0), axis=1)
    miss = np.take_along_axis(miss, idx, axis=1)
    fa = np.take_along_axis(fa, idx, axis=1)
    cross = np.argmax(miss >= fa, axis=1)  # >= 1: the start point has miss 0 < false alarm 1
    r = np.arange(rows)
    m0, a0, m1, a1 = miss[r, cross - 1], fa[r, cross - 1], miss[r, cross], fa[r, cross]
    u = (a0 - m0) / ((m1 - a1) - (m0 - a0))
    return m0 + u * (m1 - m0)


def eer(target_scores: Sequence[float] | np.ndarray, nontarget_scores: Sequence[float] | np.ndarray) -> float:
    """Equal error rate in percent (higher scores = more likely the same speaker), interpolated linearly at the
    crossing of the miss and false-alarm rates. ValueError when either list is empty."""
    import numpy as np

    t = np.asarray(target_scores, dtype=np.float64).ravel()
    f = np.asarray(nontarget_scores, dtype=np.float64).ravel()
    if t.size == 0 or f.size == 0:
        raise ValueError("EER needs at least one target and one non-target score")
    if not (np.isfinite(t).all() and np.isfinite(f).all()):
        raise ValueError("EER scores must be finite")
    return float(100.0 * _eer_rows(t[None], f[None])[0])


def eer_ci(
    target_scores: Sequence[float] | np.ndarray, nontarget_scores: Sequence[float] | np.ndarray,
    resamples: int = 1000, level: float = 0.95, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the EER (percent): target and non-target trials resampled with
    replacement, independently, from a seeded generator (same inputs and seed, same interval)."""
    import numpy as np

    t = np.asarray(target_scores, dtype=np.float64).ravel()
    f = np.asarray(nontarget_scores, dtype=np.float64).ravel()
    if t.size == 0 or f.size == 0:
        raise ValueError("EER needs at least one target and one non-target score")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError("resamples must be at least 1 and level in (0, 1)")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, resamples, 250):  # bounded memory for large trial lists
        b = min(250, resamples - start)
        out.append(_eer_rows(t[rng.integers(0, t.size, (b, t.size))], f[rng.integers(0, f.size, (b, f.size))]))
    values = 100.0 * np.concatenate(out)
    alpha = (1.0 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha))


def enroll_seed(seed: int, round_: int, client_id: int) -> int:
    """The enrollment training seed: derived like the clients' (run seed, round, client), in a separate stream,
    so an enrollment model never shares dropout masks or batch order with the update it is compared with."""
    import numpy as np

    return int(np.random.SeedSequence([seed, round_, client_id, ENROLL_SEED_TAG]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class FootprintConfig:
    rounds: tuple[int, ...] = ()  # rounds to analyse (empty: the run's footprint rounds)
    indicator_manifest: str = ""  # indicator manifest ('': the run's indicator set)
    indicator_split: str = ""  # its corpus split ('': the run's, dev by default)
    indicator_utterances: int = 0  # indicator utterances (0: the run's)
    enroll_epochs: int = 0  # epochs of enrollment fine-tuning on each holdout (0: the run's local epochs)
    bootstrap: int = 1000  # bootstrap resamples for the confidence intervals
    confidence: float = 0.95  # level of the confidence intervals
    seed: int = 0  # bootstrap seed
    device: str = "auto"  # auto | cpu | cuda: where models run
    reuse: bool = True  # reuse stored enrollment footprints made with the same settings

    def __post_init__(self) -> None:
        from fedw2v.device import DEVICES

        checks = [
            (all(r >= 1 for r in self.rounds), "rounds must be at least 1"),
            (len(set(self.rounds)) == len(self.rounds), "rounds must not repeat"),
            (self.indicator_utterances >= 0, "indicator utterances must be at least 1"),
            (self.enroll_epochs >= 0, "enroll epochs must be at least 1"),
            (self.bootstrap >= 1, "bootstrap resamples must be at least 1"),
            (0 < self.confidence < 1, "confidence must lie in (0, 1)"),
            (self.device in DEVICES, f"device must be one of {', '.join(DEVICES)}"),
        ]
        for ok, rule in checks:
            if not ok:
                raise ValueError(rule)


@dataclass
class LayerEER:
    """EER per layer (percent) with its confidence interval, over some trials; None when not measurable."""

    targets: int
    nontargets: int
    eer: list[float] | None = None
    ci: list[tuple[float, float]] | None = None
    reason: str = ""  # why not measurable

    @property
    def measurable(self) -> bool:
        return self.eer is not None

    def to_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "nontargets": self.nontargets, "measurable": self.measurable,
                "eer": self.eer, "ci": [list(c) for c in self.ci] if self.ci else None, "reason": self.reason}


@dataclass
class RoundResult:
    round: int
    sampled: list[int]  # clients sampled in the round
    analysed: list[int]  # clients with both footprints (one target trial each)
    excluded: dict[int, str]  # client -> why it gives no trial
    test_source: str  # stored (footprints/) | updates (computed here from updates/)
    base_checkpoint: str  # the global model the round's clients started from
    result: LayerEER
    enroll_reused: int = 0  # enrollment footprints reused from an earlier analysis
    test_detail: str = ""  # where the test footprints came from, in words

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "sampled": self.sampled, "analysed": self.analysed,
                "excluded": {str(c): r for c, r in sorted(self.excluded.items())}, "test_source": self.test_source,
                "test_detail": self.test_detail,
                "base_checkpoint": self.base_checkpoint, "enroll_reused": self.enroll_reused,
                **self.result.to_dict()}


@dataclass
class FootprintReport:
    run_dir: str
    layers: list[str]
    rounds: list[RoundResult]
    pooled: LayerEER  # all analysed rounds' trials together (each round's scores normalised, see layer_eer)
    average: list[float] | None  # mean EER per layer over the measurable rounds
    indicator: dict[str, Any]
    enroll_epochs: int
    bootstrap: int
    confidence: float
    seconds: float = 0.0

    @property
    def measurable_rounds(self) -> list[int]:
        return [r.round for r in self.rounds if r.result.measurable]

    def best_layer(self) -> tuple[str, float] | None:
        """(layer, EER) of the lowest pooled EER, or None."""
        if not self.pooled.measurable:
            return None
        i = min(range(len(self.layers)), key=lambda k: self.pooled.eer[k])
        return self.layers[i], self.pooled.eer[i]

    def to_dict(self) -> dict[str, Any]:
        best = self.best_layer()
        return {
            "run_dir": self.run_dir, "layers": self.layers, "indicator": self.indicator,
            "enroll_epochs": self.enroll_epochs, "bootstrap": self.bootstrap, "confidence": self.confidence,
            "rounds": [r.to_dict() for r in self.rounds], "pooled": self.pooled.to_dict(), "average": self.average,
            "best_layer": None if best is None else {"layer": best[0], "eer": best[1]},
            "seconds": round(self.seconds, 2),
        }


def normalised_scores(trials: Trials) -> tuple[np.ndarray, np.ndarray]:
    """(target, non-target) scores of one round standardised per layer by the round's non-target scores (mean 0,
    standard deviation 1; a shift only when they do not vary). Monotone within the round, so the round's own EER
    is unchanged; it puts rounds on one scale (the global model, hence the score range, changes every round)."""
    import numpy as np

    mu = trials.nontarget.mean(axis=1, keepdims=True)
    sd = trials.nontarget.std(axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    return (trials.target - mu) / sd, (trials.nontarget - mu) / sd


def layer_eer(trials: Sequence[Trials], resamples: int = 1000, level: float = 0.95, seed: int = 0) -> LayerEER:
    """EER per layer (and CI) over the trials of one or more rounds (each round's scores `normalised_scores`
    first, so pooled rounds share a scale); not measurable below `MIN_TARGETS` target trials or without a
    non-target trial."""
    import numpy as np

    usable = [t for t in trials if t.target.size and t.nontarget.size]  # a lone client has no non-target
    nt = sum(t.target.shape[1] for t in usable)
    nn = sum(t.nontarget.shape[1] for t in usable)
    if nt < MIN_TARGETS or nn < 1:
        nt = max(nt, sum(t.target.shape[1] for t in trials if t.target.size))
        return LayerEER(nt, nn, reason=f"{nt} target trial{'s' if nt != 1 else ''} (at least {MIN_TARGETS} needed)"
                        if nt < MIN_TARGETS else "no non-target trial")
    scored = [normalised_scores(t) for t in usable]
    target = np.concatenate([t for t, _ in scored], axis=1)
    nontarget = np.concatenate([n for _, n in scored], axis=1)
    eers = [eer(target[l], nontarget[l]) for l in range(target.shape[0])]
    cis = [eer_ci(target[l], nontarget[l], resamples, level, seed + l) for l in range(target.shape[0])]
    return LayerEER(nt, nn, eers, cis)


def _round_events(run_dir: Path) -> dict[int, dict[str, Any]]:
    """{round: {"clients": sampled, "errors": {client: error or None}, "ended": bool}} from metrics.jsonl."""
    from fedw2v import runs

    out: dict[int, dict[str, Any]] = {}
    for e in runs.read_metrics(run_dir):
        r = e.get("round")
        if not isinstance(r, int):
            continue
        slot = out.setdefault(r, {"clients": [], "errors": {}, "ended": False})
        kind = e.get("event")
        if kind == "round_start":
            slot["clients"] = [int(c) for c in e.get("clients", [])]
        elif kind == "fit":
            slot["errors"][int(e["client"])] = e.get("error")
        elif kind == "round_end":
            slot["ended"] = True
    return out


def analyse(
    run_dir: str | os.PathLike, config: FootprintConfig = FootprintConfig(), progress: Progress | None = None
) -> FootprintReport:
    """The footprint attack on a federated run: EER per layer per analysed round, pooled and averaged.

    Reads the run directory (config.json, metrics.jsonl, checkpoints, footprints/ or updates/, the clients
    manifest); writes only footprints it computes (test footprints from saved updates, enrollment footprints), so
    a rerun reuses them. Every client left out of a round is reported with the reason; a round whose test
    footprints were neither stored nor derivable is an InputError naming it."""
    import numpy as np

    from fedw2v import manifest as mf
    from fedw2v import runs
    from fedw2v.config.simulate import load_run_config

    t_start = time.perf_counter()
    say = progress or (lambda message: None)
    run = Path(run_dir)
    sim = load_run_config(run)
    rounds = list(config.rounds or sim.footprint_rounds)
    if not rounds:
        raise InputError(
            f"{run}: the run has no footprint rounds and --rounds names none",
            hint="pass --rounds, or rerun `fedw2v simulate` with --footprint-rounds",
        )
    events = _round_events(run)
    done = sorted(r for r, e in events.items() if e["ended"] and r >= 1)
    sources: dict[int, str] = {}
    for r in rounds:
        if r not in events or not events[r]["ended"]:
            span = f"rounds 1-{done[-1]}" if done else "no round"
            raise InputError(f"{run}: round {r} was not run to the end (the run completed {span})")
        if footprint_path(run, r, "test").is_file():
            sources[r] = "stored"
        elif saved_updates(run, r):
            sources[r] = "updates"
        else:
            raise InputError(
                f"{run}: round {r} has neither stored footprints ({FOOTPRINTS}/{runs.checkpoint_name(r)}/) nor saved "
                f"client updates ({UPDATES}/{runs.checkpoint_name(r)}/)",
                hint=f"rerun `fedw2v simulate` with --footprint-rounds {r} (or --save-updates)",
            )
        base = run / "checkpoints" / runs.checkpoint_name(r - 1)
        if not (base / "config.json").is_file():
            raise InputError(
                f"{run}: checkpoint {runs.checkpoint_name(r - 1)} (the global model of round {r}) is missing",
                hint=f"runs made with --footprint-rounds {r} keep it; rerun simulate with that option",
            )

    clients_manifest = mf.read(sim.clients_manifest)
    indicator = _analysis_indicator(run, sim, config, rounds, sources, clients_manifest)
    speakers_of = client_speakers(clients_manifest)
    holdout = _holdout_clients(clients_manifest)
    say(f"indicator set: {len(indicator.utterances)} utterances ({indicator.seconds:.0f} s) of {indicator.split} "
        f"from {indicator.source}")

    enroll_epochs = config.enroll_epochs or sim.local_epochs
    train_config = replace(sim.train_config(), epochs=enroll_epochs, device=config.device)
    results: list[RoundResult] = []
    all_trials: list[Trials] = []
    layers: list[str] = []
    for r in rounds:
        ev = events[r]
        sampled = ev["clients"]
        excluded: dict[int, str] = {}
        candidates = []
        for c in sampled:
            err = ev["errors"].get(c, "no fit result logged")
            if err:
                excluded[c] = f"failed in round {r}"
            elif c not in holdout:
                excluded[c] = "no holdout"
            else:
                candidates.append(c)
        overlap = sorted(set(indicator.speakers) & set().union(*(speakers_of.get(c, set()) for c in candidates)))
        if overlap:
            raise InputError(
                f"{run}: the indicator set shares speakers with clients analysed in round {r} "
                f"({', '.join(overlap[:5])}); their own speech would be scored",
                hint="name an indicator set of other speakers with --indicator / --indicator-split",
            )
        base_name = runs.checkpoint_name(r - 1)
        rr = _analyse_round(run, r, sim, config, train_config, indicator, candidates, excluded, sources[r],
                            clients_manifest, say)
        layers = rr.pop("layers")
        trials = rr.pop("trials")
        all_trials.append(trials)
        res = layer_eer([trials], config.bootstrap, config.confidence, config.seed)
        results.append(RoundResult(r, sampled, trials.clients, excluded, sources[r], base_name, res, rr["reused"],
                                   rr["test_detail"]))
    pooled = layer_eer(all_trials, config.bootstrap, config.confidence, config.seed)
    measurable = [r.result.eer for r in results if r.result.measurable]
    average = [float(v) for v in np.mean(np.array(measurable), axis=0)] if measurable else None
    return FootprintReport(str(run), layers, results, pooled, average, indicator.describe(), enroll_epochs,
                           config.bootstrap, config.confidence, time.perf_counter() - t_start)


def _holdout_clients(manifest: Manifest) -> set[int]:
    import pyarrow.compute as pc

    t = manifest.table
    rows = t.filter(pc.equal(t.column("local_split"), "holdout"))
    return {int(c) for c in rows.column("client_id").drop_null().unique().to_pylist()}


def _analysis_indicator(run: Path, sim: Any, config: FootprintConfig, rounds: list[int], sources: dict[int, str],
                        clients_manifest: Manifest) -> Indicator:
    """The indicator set: the one the stored test footprints were computed on, else the run's (or the options')."""
    from fedw2v import manifest as mf

    options = replace(
        sim,
        indicator_manifest=config.indicator_manifest or sim.indicator_manifest,
        indicator_split=config.indicator_split or sim.indicator_split,
        indicator_utterances=config.indicator_utterances or sim.indicator_utterances,
    )
    stored = {}
    for r in rounds:
        if sources[r] == "stored":
            stored[r] = read_footprints(run, r, "test")[1].get("indicator", {})
    if not stored:
        return run_indicator(options, clients_manifest)
    first_round, first = next(iter(stored.items()))
    for r, meta in stored.items():
        if meta.get("utt_ids") != first.get("utt_ids"):
            raise InputError(
                f"{run}: the stored test footprints of rounds {first_round} and {r} were computed on different "
                "indicator sets; footprints of different sets cannot be compared",
                hint="analyse those rounds separately with --rounds",
            )
    ids = list(first.get("utt_ids") or [])
    if not ids:
        raise InputError(f"{run}: the stored test footprints of round {first_round} do not record their indicator set")
    wanted = config.indicator_manifest or config.indicator_split or config.indicator_utterances
    if wanted:
        chosen = run_indicator(options, clients_manifest)
        if chosen.utt_ids != ids:
            raise InputError(
                f"{run}: the stored test footprints of round {first_round} were computed on another indicator set "
                f"({len(ids)} utterances of {first.get('split') or '?'} from {first.get('manifest') or '?'}) than "
                "--indicator/--indicator-split/--indicator-utterances select",
                hint="drop those options, or rerun simulate with --save-updates to analyse with any indicator set",
            )
        return chosen
    path = config.indicator_manifest or sim.indicator_manifest or sim.clients_manifest
    source = clients_manifest if path == sim.clients_manifest else mf.read(path)
    # indicator_from_ids sets available = len(ids): one utterance per id, or an error
    return indicator_from_ids(source, ids, sim.corpus_root or None, split=first.get("split", ""), name=str(path))


def _analyse_round(run: Path, r: int, sim: Any, config: FootprintConfig, train_config: Any, indicator: Indicator,
                   candidates: list[int], excluded: dict[int, str], source: str, clients_manifest: Manifest,
                   say: Progress) -> dict[str, Any]:
    """Test and enrollment footprints of one round (reference states computed only if a footprint is computed)
    -> {"trials", "layers", "reused", "test_detail"}."""
    from fedw2v import runs
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.weights import load_arrays
    from fedw2v.model import load_model
    from fedw2v.device import resolve_device
    from fedw2v.train import local_train

    device = resolve_device(config.device)
    base_name = runs.checkpoint_name(r - 1)
    say(f"round {r}: loading the global model {base_name}")
    lm = load_model(str(run / "checkpoints" / base_name))
    model, processor = lm.model, lm.processor
    model.to(device)
    cfg = _base(model).config
    layers = _layer_names(cfg.num_hidden_layers)
    meta = footprint_meta(indicator, layers, cfg.hidden_size, indicator_frames(model, indicator))
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cache: dict[str, ReferenceStates] = {}

    def restore() -> None:
        model.load_state_dict(base_state)

    def reference() -> ReferenceStates:
        if "ref" not in cache:
            restore()
            say(f"round {r}: hidden states of {base_name} on {len(indicator.utterances)} indicator utterances")
            cache["ref"] = ReferenceStates.compute(model, processor, indicator, device)
        return cache["ref"]

    # test footprints: stored (on the server, or by an earlier analysis), else computed from the saved updates
    if source == "stored":
        test, test_meta = read_footprints(run, r, "test")
        if test_meta.get("layers") and test_meta["layers"] != layers:
            raise InputError(
                f"{footprint_path(run, r, 'test')}: footprints of another model ({len(test_meta['layers'])} layers; "
                f"{base_name} has {len(layers)})"
            )
        detail = ("stored, computed from saved updates by an earlier analysis" if test_meta.get("source") == "updates"
                  else "stored by the server during the run")
    else:
        test = {}
        have = set(saved_updates(run, r))
        for i, c in enumerate([c for c in candidates if c in have], start=1):
            ref = reference()
            say(f"round {r}: test footprint of client {c} from its saved update ({i})")
            restore()
            load_arrays(model, read_update(run, r, c))
            test[c] = footprint(model, processor, ref, device)
        if test:
            write_footprints(run, r, "test", test, {**meta, "source": "updates"})
        detail = "computed from saved updates"
    for c in candidates:
        if c not in test:
            excluded[c] = "no test footprint stored" if source == "stored" else "no saved update"
    candidates = [c for c in candidates if c in test]

    # enrollment footprints: global_r fine-tuned on each client's holdout
    train = {k: v for k, v in train_config.to_dict().items() if k not in ("seed", "device", "num_workers")}
    enroll_meta = {**meta, "enroll": {"epochs": train_config.epochs, "train": train, "base_checkpoint": base_name,
                                      "seed_rule": "enroll_seed(run seed, round, client)"}}
    enroll: dict[int, Any] = {}
    reused = 0
    if config.reuse and footprint_path(run, r, "enroll").is_file():
        old, old_meta = read_footprints(run, r, "enroll")
        if _comparable(old_meta) == _comparable(json.loads(json.dumps({**enroll_meta, "kind": "enroll", "round": r}))):
            enroll = {c: v for c, v in old.items() if c in candidates}
            reused = len(enroll)
    fresh = {}
    for i, c in enumerate([c for c in candidates if c not in enroll], start=1):
        ref = reference()
        say(f"round {r}: enrollment model of client {c}: {base_name} fine-tuned on its holdout ({i})")
        hold = utterances_from_manifest(clients_manifest, split="train", local_split="holdout", client_id=c,
                                        corpus_root=sim.corpus_root or None)
        dev = utterances_from_manifest(clients_manifest, split="train", local_split="dev", client_id=c,
                                       corpus_root=sim.corpus_root or None)
        restore()
        seeded = replace(train_config, seed=enroll_seed(sim.seed, r, c))
        m = local_train(model, processor, hold, seeded, dev=dev or None)
        if m.steps == 0:
            excluded[c] = "enrollment training took no step (holdout outside the duration filter)"
            continue
        fresh[c] = footprint(model, processor, ref, device)
    if fresh:
        write_footprints(run, r, "enroll", fresh, enroll_meta)
    enroll.update(fresh)
    restore()
    trials = make_trials(enroll, {c: test[c] for c in candidates if c in enroll})
    return {"trials": trials, "layers": layers, "reused": reused, "test_detail": detail}


def report_json(report: FootprintReport) -> str:
    """The report as one JSON document (NaN-free)."""
    from fedw2v.runs import json_safe

    return json.dumps(json_safe(report.to_dict()))


__all__ = [
    "FootprintConfig", "FootprintReport", "Indicator", "LayerEER", "ReferenceStates", "RoundResult", "Trials",
    "analyse", "footprint_meta", "indicator_frames", "normalised_scores", "client_speakers", "cosine_scores", "eer", "eer_ci", "enroll_seed", "footprint",
    "footprint_path", "indicator_from_ids", "layer_eer", "load_indicator", "make_trials", "read_footprints",
    "read_update", "report_json", "run_indicator", "saved_updates", "update_path",
    "write_footprints", "write_update",
]
