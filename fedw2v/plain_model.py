"""wav2vec 2.0 CTC inference in plain torch, for `fedw2v transcribe` (``--engine auto|torch|transformers``).

Importing transformers' ``Wav2Vec2ForCTC`` pulls in ~1,700 modules (sympy, torch.distributed, dynamo, …) and
~240 MB of resident memory before a single weight is read; for a 3-hour file that is most of what transcribe
holds beyond torch itself. This module runs the same eval-mode forward pass (feature encoder, feature
projection, convolutional position embedding, post- or pre-LN transformer, CTC head) from the same files of a
model directory (config.json, model.safetensors, vocab.json, tokenizer_config.json, preprocessor_config.json),
without importing transformers. Its modules carry transformers' names, so the safetensors keys load by name
as they are; ``tests/test_plain_model.py`` checks logits and greedy ids against ``Wav2Vec2ForCTC`` for both
layouts (wav2vec2-base: group norm, post-LN; large-lv60: layer norm, pre-LN) and with padding masks.

It covers the standard wav2vec2 CTC checkpoints (what fedw2v saves, ``facebook/wav2vec2-*-960h*``); anything
else (adapters, other activations, sharded or pickled weights, unknown weights, a hub id) is refused by
`unsupported` with the reason, and ``--engine auto`` then loads the model with transformers as before.
Weights are read from safetensors only, and nothing from the directory is ever executed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from fedw2v.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from fedw2v.model import LoadedModel, ModelSource

ENGINES = ("auto", "torch", "transformers")
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu", "swish")
WEIGHTS = "model.safetensors"
# The feature encoder runs this many output frames (2.5 s at 20 ms) at a time (`PlainWav2Vec2ForCTC._features`):
# the same numbers as 250 (5 s) and 15-20% faster on a CPU (the first layer's block stays in cache), with less memory.
BLOCK_FRAMES = 125
# Weights of a pretraining or masking head that the CTC forward pass never reads.
IGNORED_WEIGHTS = ("wav2vec2.masked_spec_embed",)
POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv."
# The weight-normalised position convolution as transformers saves it: (magnitude g, direction v), new or old names.
WEIGHT_NORM_KEYS = (("parametrizations.weight.original0", "parametrizations.weight.original1"),
                    ("weight_g", "weight_v"))


@dataclass(frozen=True)
class PlainConfig:
    """The config.json keys the forward pass reads; a missing key takes `transformers.Wav2Vec2Config`'s default
    (a test compares every default with transformers')."""

    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    vocab_size: int = 32

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlainConfig:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in data:
                value = data[f.name]
                values[f.name] = tuple(int(v) for v in value) if isinstance(f.default, tuple) else value
        return cls(**values)


def config_problem(data: dict[str, Any]) -> str | None:
    """Why this config.json is outside what the plain forward pass runs, or None."""
    if data.get("model_type") != "wav2vec2":
        return f"model_type is {data.get('model_type')!r}, not 'wav2vec2'"
    if "Wav2Vec2ForCTC" not in (data.get("architectures") or []):
        return "not a Wav2Vec2ForCTC model (no CTC head)"
    if data.get("add_adapter") or data.get("adapter_attn_dim") is not None:
        return "it has adapter layers"
    try:
        cfg = PlainConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        return f"config.json has a value of the wrong type ({exc})"
    if cfg.feat_extract_norm not in ("group", "layer"):
        return f"feat_extract_norm {cfg.feat_extract_norm!r}"
    for key in ("feat_extract_activation", "hidden_act"):
        if getattr(cfg, key) not in ACTIVATIONS:
            return f"{key} {getattr(cfg, key)!r}"
    if not len(cfg.conv_dim) == len(cfg.conv_kernel) == len(cfg.conv_stride) or not cfg.conv_dim:
        return "conv_dim, conv_kernel and conv_stride differ in length"
    if cfg.hidden_size % cfg.num_attention_heads:
        return "hidden_size is not a multiple of num_attention_heads"
    return None


def unsupported(source: ModelSource) -> str | None:
    """Why ``source`` cannot run on the plain forward pass (the reason, in words), or None when it can. A local
    directory's JSON files are checked first, as the transformers path checks them (`model.refuse_custom_code`:
    InputError, in one line, for one that is not a JSON object or names code to run)."""
    from fedw2v.model import refuse_custom_code
    from fedw2v.runs import read_json

    if source.random_init:
        return "the random-init preset is built by transformers"
    if source.kind == "hub":
        return "a hub id (only local model directories)"
    directory = Path(source.location)
    refuse_custom_code(directory)
    if not (directory / WEIGHTS).is_file():
        return f"no single {WEIGHTS} (sharded or pickled weights)"
    vocab = read_json(directory / "vocab.json") if (directory / "vocab.json").is_file() else {}
    if not vocab or not all(isinstance(v, int) for v in vocab.values()):
        return "no flat vocab.json (a tokenizer this engine reads)"
    if not (directory / "preprocessor_config.json").is_file():
        return "no preprocessor_config.json"
    return config_problem(read_json(directory / "config.json"))


class Output(NamedTuple):
    logits: torch.Tensor


def _activation(name: str):
    import torch.nn.functional as F

    if name == "gelu_new":
        return lambda x: F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu}[name]


def _build(cfg: PlainConfig) -> torch.nn.Module:
    """The module tree, named as transformers names it (so the state dict loads by key), without weights."""
    from torch import nn

    def conv_layer(i: int) -> nn.Module:
        layer = nn.Module()
        layer.conv = nn.Conv1d(cfg.conv_dim[i - 1] if i else 1, cfg.conv_dim[i], cfg.conv_kernel[i],
                               cfg.conv_stride[i], bias=cfg.conv_bias)
        if cfg.feat_extract_norm == "layer":
            layer.layer_norm = nn.LayerNorm(cfg.conv_dim[i])
        elif i == 0:
            layer.layer_norm = nn.GroupNorm(cfg.conv_dim[0], cfg.conv_dim[0])
        return layer

    def encoder_layer() -> nn.Module:
        h = cfg.hidden_size
        layer = nn.Module()
        layer.attention = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(layer.attention, name, nn.Linear(h, h))
        layer.layer_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        layer.feed_forward = nn.Module()
        layer.feed_forward.intermediate_dense = nn.Linear(h, cfg.intermediate_size)
        layer.feed_forward.output_dense = nn.Linear(cfg.intermediate_size, h)
        layer.final_layer_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        return layer

    w2v = nn.Module()
    w2v.feature_extractor = nn.Module()
    w2v.feature_extractor.conv_layers = nn.ModuleList(conv_layer(i) for i in range(len(cfg.conv_dim)))
    w2v.feature_projection = nn.Module()
    w2v.feature_projection.layer_norm = nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
    w2v.feature_projection.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)
    w2v.encoder = nn.Module()
    w2v.encoder.pos_conv_embed = nn.Module()
    k = cfg.num_conv_pos_embeddings
    w2v.encoder.pos_conv_embed.conv = nn.Conv1d(cfg.hidden_size, cfg.hidden_size, k, padding=k // 2,
                                                groups=cfg.num_conv_pos_embedding_groups)
    w2v.encoder.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
    w2v.encoder.layers = nn.ModuleList(encoder_layer() for _ in range(cfg.num_hidden_layers))
    root = nn.Module()
    root.wav2vec2 = w2v
    root.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size)
    return root


class PlainWav2Vec2ForCTC:
    """The eval-mode forward pass of ``Wav2Vec2ForCTC`` over a module tree named like transformers'.
    Call it like the transformers model: ``model(input_values=..., attention_mask=...).logits``."""

    def __init__(self, config: PlainConfig, state_dict: dict[str, torch.Tensor]):
        import torch

        self.config = config
        with torch.device("meta"):
            self.net = _build(config)
        self.net.load_state_dict(state_dict, strict=True, assign=True)
        self.net.eval()
        self.training = False
        self._feat_act = _activation(config.feat_extract_activation)
        self._act = _activation(config.hidden_act)

    # The nn.Module surface that fedw2v.decode.Decoder and eval_mode use.
    def parameters(self):
        return self.net.parameters()

    def to(self, device: Any) -> PlainWav2Vec2ForCTC:
        self.net.to(device)
        return self

    def eval(self) -> PlainWav2Vec2ForCTC:
        return self

    def train(self, mode: bool = True) -> PlainWav2Vec2ForCTC:
        if mode:
            raise RuntimeError("the plain-torch wav2vec2 runs inference only")
        return self

    def _get_feat_extract_output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames of audio this many samples long (transformers' method name, which Decoder calls)."""
        import torch

        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
        return lengths

    def __call__(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Output:
        import torch

        with torch.inference_mode():
            if attention_mask is None or bool(attention_mask.all()):  # nothing padded: one item at a time
                logits = torch.cat([self.forward(row[None]) for row in input_values])
            else:
                logits = self.forward(input_values, attention_mask)
        return Output(logits)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        import torch

        cfg, w2v = self.config, self.net.wav2vec2
        x = torch.cat([self._features(row) for row in input_values])  # one item at a time: less memory
        x = w2v.feature_projection.projection(w2v.feature_projection.layer_norm(x.transpose(1, 2)))
        keep = None
        if attention_mask is not None:
            frames = self._get_feat_extract_output_lengths(attention_mask.sum(-1))
            keep = torch.arange(x.shape[1], device=x.device)[None, :] < frames[:, None]
            if bool(keep.all()):
                keep = None  # nothing padded: no mask (the same numbers, and SDPA's faster path)
            else:
                x = x.masked_fill(~keep[..., None], 0.0)  # padded frames enter the position conv as zeros
        pos = w2v.encoder.pos_conv_embed.conv(x.transpose(1, 2))
        if cfg.num_conv_pos_embeddings % 2 == 0:
            pos = pos[:, :, :-1]
        x = x + self._feat_act(pos).transpose(1, 2)
        if not cfg.do_stable_layer_norm:
            x = w2v.encoder.layer_norm(x)
        mask = keep[:, None, None, :] if keep is not None else None
        for layer in w2v.encoder.layers:
            x = self._layer(layer, x, mask)
        if cfg.do_stable_layer_norm:
            x = w2v.encoder.layer_norm(x)
        return self.net.lm_head(x)

    def _features(self, audio: torch.Tensor) -> torch.Tensor:
        """The feature encoder's output (1, channels, frames) for one item's samples, computed BLOCK_FRAMES
        frames at a time: a strided conv stack without padding is local in time, so each block reads only its
        own samples and the first layer's activations (64-512 channels at 3.2 kHz: 0.4 GB for 30 s of a base
        model) never exist for a whole chunk at once. Group norm (wav2vec2-base's first layer, per channel over
        the whole item) takes two passes: the channel statistics first, in float64, then the blocks."""
        import torch

        from fedw2v.model import hop_samples, receptive_field

        hop, field = hop_samples(self.config), receptive_field(self.config)
        frames = int(self._get_feat_extract_output_lengths(torch.tensor(audio.shape[-1])))
        if frames <= BLOCK_FRAMES:
            return self._conv_stack(audio[None, None])
        stats = self._group_stats(audio) if self.config.feat_extract_norm == "group" else None
        cut = [audio[None, None, j * hop : (min(frames, j + BLOCK_FRAMES) - 1) * hop + field]
               for j in range(0, frames, BLOCK_FRAMES)]
        out = torch.cat([self._conv_stack(piece, stats) for piece in cut], dim=2)
        if out.shape[-1] != frames:  # pragma: no cover -- the arithmetic above is wrong for this config
            raise RuntimeError(f"blocked feature encoder gave {out.shape[-1]} frames, not {frames}")
        return out

    def _group_stats(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, biased variance) per channel of the first conv layer's output over all of ``audio`` (what
        its GroupNorm normalises with), from blocks of that layer's frames, accumulated in float64."""
        import torch

        from fedw2v.model import hop_samples

        conv = self.net.wav2vec2.feature_extractor.conv_layers[0].conv
        k, s = self.config.conv_kernel[0], self.config.conv_stride[0]
        count = (audio.shape[-1] - k) // s + 1
        total = torch.zeros(2, conv.out_channels, dtype=torch.float64)
        step = BLOCK_FRAMES * hop_samples(self.config) // s
        for a in range(0, count, step):
            y = conv(audio[None, None, a * s : (min(count, a + step) - 1) * s + k])[0].double()
            total += torch.stack((y.sum(-1), (y * y).sum(-1)))
        mean = total[0] / count
        return mean.float(), (total[1] / count - mean * mean).clamp_min(0).float()

    def _conv_stack(self, x: torch.Tensor, group_stats: tuple[torch.Tensor, torch.Tensor] | None = None):
        cfg = self.config
        for i, layer in enumerate(self.net.wav2vec2.feature_extractor.conv_layers):
            x = layer.conv(x)
            if cfg.feat_extract_norm == "layer":
                x = layer.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
            elif i == 0 and group_stats is not None:  # group norm with the whole item's statistics
                norm = layer.layer_norm
                mean, var = group_stats
                scale = norm.weight / (var + norm.eps).sqrt()
                x = x * scale[:, None] + (norm.bias - mean * scale)[:, None]
            elif i == 0:
                x = layer.layer_norm(x)
            x = self._feat_act(x)
        return x

    def _layer(self, layer: Any, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.config.do_stable_layer_norm:  # pre-LN (large-lv60)
            x = x + self._attention(layer.attention, layer.layer_norm(x), mask)
            return x + self._feed_forward(layer.feed_forward, layer.final_layer_norm(x))
        x = layer.layer_norm(x + self._attention(layer.attention, x, mask))  # post-LN (base)
        return layer.final_layer_norm(x + self._feed_forward(layer.feed_forward, x))

    def _attention(self, attn: Any, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        import torch.nn.functional as F

        b, t, h = x.shape
        heads = self.config.num_attention_heads
        q, k, v = (proj(x).view(b, t, heads, h // heads).transpose(1, 2)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=(h // heads) ** -0.5)
        return attn.out_proj(out.transpose(1, 2).reshape(b, t, h))

    def _feed_forward(self, ff: Any, x: torch.Tensor) -> torch.Tensor:
        return ff.output_dense(self._act(ff.intermediate_dense(x)))


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights, float32, with the position conv's weight norm folded into one weight (as
    ``torch.nn.utils.parametrizations.weight_norm(dim=2)`` computes it) and unused heads dropped."""
    import torch
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types for a damaged file
        first = (str(exc).strip().splitlines() or [""])[0]
        raise InputError(f"{path}: cannot load the model weights ({type(exc).__name__}: {first})") from None
    weights = {k: v.float() for k, v in weights.items() if k not in IGNORED_WEIGHTS}
    for g_name, v_name in WEIGHT_NORM_KEYS:
        if POS_CONV + v_name in weights:
            g, v = weights.pop(POS_CONV + g_name), weights.pop(POS_CONV + v_name)
            weights[POS_CONV + "weight"] = torch._weight_norm(v, g, 2)
    return weights


def load(source: ModelSource) -> LoadedModel:
    """The model directory of ``source`` on the plain forward pass (one that `unsupported` accepted: its JSON
    files checked). InputError when its weights do not match its config (a missing or unexpected tensor, a wrong
    shape), naming the file."""
    from fedw2v.model import LoadedModel
    from fedw2v.runs import read_json

    directory = Path(source.location)
    config = PlainConfig.from_dict(read_json(directory / "config.json"))
    weights = _state_dict(directory / WEIGHTS)
    try:
        model = PlainWav2Vec2ForCTC(config, weights)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(
            f"{directory / WEIGHTS}: the weights do not match config.json ({' '.join(first[:2])[:300]})",
            hint="try --engine transformers",
        ) from None
    processor = PlainProcessor(PlainTokenizer.from_dir(directory), PlainFeatureExtractor.from_dir(directory))
    return LoadedModel(model, processor, source, new_head=False)  # type: ignore[arg-type]


def load_for_inference(source: ModelSource, engine: str, allow_pickle: bool = False) -> tuple[LoadedModel, str]:
    """(the model, the engine that runs it): ``auto`` takes the plain forward pass when `unsupported` finds
    nothing against it and transformers otherwise; ``torch`` refuses a model it cannot run, in one line."""
    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine != "transformers":
        reason = unsupported(source)
        if reason is None:
            return load(source), "torch"
        if engine == "torch":
            raise InputError(f"{source.location}: --engine torch cannot run this model: {reason}",
                             hint="use --engine transformers (or auto)")
    from fedw2v.model import load_model

    return load_model(source, allow_pickle=allow_pickle), "transformers"


@dataclass(frozen=True)
class PlainTokenizer:
    """What decoding reads of a ``Wav2Vec2CTCTokenizer``: its vocabulary and special tokens."""

    vocab: dict[str, int]
    pad_token: str = "<pad>"
    unk_token: str = "<unk>"
    word_delimiter_token: str = "|"

    @classmethod
    def from_dir(cls, directory: Path) -> PlainTokenizer:
        from fedw2v.runs import read_json

        vocab = read_json(directory / "vocab.json")
        extra_path = directory / "tokenizer_config.json"
        extra = read_json(extra_path) if extra_path.is_file() else {}
        names = {k: extra[k] for k in ("pad_token", "unk_token", "word_delimiter_token")
                 if isinstance(extra.get(k), str)}
        tokenizer = cls(dict(vocab), **names)
        if tokenizer.pad_token not in vocab:
            raise InputError(f"{directory / 'vocab.json'}: has no pad token {tokenizer.pad_token!r} (the CTC blank)")
        return tokenizer

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    @property
    def pad_token_id(self) -> int:
        return self.vocab[self.pad_token]


@dataclass(frozen=True)
class PlainFeatureExtractor:
    """``Wav2Vec2FeatureExtractor``'s call (pad, then zero-mean unit-variance per item), in numpy."""

    sampling_rate: int = 16000
    do_normalize: bool = True
    return_attention_mask: bool = False
    padding_value: float = 0.0

    @classmethod
    def from_dir(cls, directory: Path) -> PlainFeatureExtractor:
        from fedw2v.runs import read_json

        data = read_json(directory / "preprocessor_config.json")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def __call__(self, audios: list[np.ndarray], sampling_rate: int, padding: bool = True, return_tensors: str = "pt",
                 return_attention_mask: bool | None = None) -> dict[str, torch.Tensor]:
        import numpy as np
        import torch

        if sampling_rate != self.sampling_rate:
            raise ValueError(f"audio at {sampling_rate} Hz for a model of {self.sampling_rate} Hz")
        with_mask = self.return_attention_mask if return_attention_mask is None else return_attention_mask
        width = max(len(a) for a in audios)
        values = np.full((len(audios), width), self.padding_value, dtype=np.float32)
        mask = np.zeros((len(audios), width), dtype=np.int32)
        for i, a in enumerate(audios):
            values[i, : len(a)] = np.asarray(a, dtype=np.float32)
            mask[i, : len(a)] = 1
        if self.do_normalize:
            for i, a in enumerate(audios):
                n = len(a) if with_mask else width  # as transformers: without a mask the padding counts too
                row = values[i]
                values[i] = (row - row[:n].mean()) / np.sqrt(row[:n].var() + 1e-7)
                values[i, n:] = self.padding_value
        out = {"input_values": torch.from_numpy(values)}
        if with_mask:
            out["attention_mask"] = torch.from_numpy(mask)
        return out


@dataclass(frozen=True)
class PlainProcessor:
    tokenizer: PlainTokenizer
    feature_extractor: PlainFeatureExtractor
