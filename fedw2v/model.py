"""Build, load and save wav2vec 2.0 CTC models with their processor (tokenizer + feature extractor).

``--model`` takes one of (`resolve`):

- ``tiny``: a ~1.4M-parameter random-init encoder config (../shared/REFERENCE.md §5), for tests;
- ``tiny-pretrained``: that model trained centrally on synthetic speech, shipped with the package
  (``fedw2v/data/tiny-pretrained/``, rebuilt by ``make pretrained``; its ``pretrain.json`` says how): the offline
  demo's starting point, as the paper starts from a pretrained wav2vec2;
- a fedw2v run directory (its ``checkpoints/LATEST``) or one checkpoint directory;
- a local Hugging Face model directory;
- a Hugging Face hub id (``facebook/wav2vec2-large-lv60``, ``facebook/wav2vec2-large-960h-lv60-self``).

Every form goes through the same path (`load_model`): read the config; if the model has a CTC head whose
tokenizer covers the characters of the training texts, load it as it is; otherwise (a self-supervised encoder
such as ``wav2vec2-large-lv60``, the ``tiny`` preset, or a head over other characters) attach a new head over
the character vocabulary of the texts (`fedw2v.text.character_vocabulary`) and build the tokenizer and feature
extractor to match. `save_model` writes a complete Hugging Face directory (safetensors, config, tokenizer,
feature extractor) atomically, which ``transformers.pipeline("automatic-speech-recognition", model=DIR)`` loads.

Weights are read from safetensors only: pickled ``pytorch_model.bin`` files can run code when loaded, so they
are refused unless the caller passes ``allow_pickle=True`` (``--allow-pickle``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.atomic import replace_directory
from fedw2v.audio import SAMPLE_RATE
from fedw2v.errors import InputError
from fedw2v.text import BLANK, UNK, WORD_DELIMITER, character_vocabulary, vocabulary_covers

if TYPE_CHECKING:  # pragma: no cover
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor

PRESETS = ("tiny", "tiny-pretrained")
# Presets built from a config with random weights (the others are model directories shipped with the package).
RANDOM_PRESETS = ("tiny",)
# The packaged `tiny-pretrained` model (package data; `make pretrained` rebuilds it with scripts/pretrain_tiny.py).
PRETRAINED_DIRS = {"tiny-pretrained": ("data", "tiny-pretrained")}
KINDS = ("preset", "run", "checkpoint", "directory", "hub")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# JSON files of a model directory that transformers reads, and the keys by which they ask it to import and run
# Python files of their own (refused: `refuse_custom_code`).
CODE_JSON = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json",
             "feature_extractor_config.json")
CODE_KEYS = ("auto_map", "custom_pipelines")
# The ~1.4M-parameter encoder of REFERENCE §5 (20 ms frames, learns from scratch on 2 CPU cores).
TINY_ENCODER = dict(
    conv_dim=(64, 128, 128, 128, 128),
    conv_kernel=(10, 8, 4, 4, 4),
    conv_stride=(5, 4, 4, 2, 2),
    hidden_size=192,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=512,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    mask_time_prob=0.05,
    architectures=["Wav2Vec2Model"],  # an encoder without a CTC head, like a self-supervised checkpoint
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, as resolved from a ``--model`` value."""

    spec: str  # what the user wrote
    kind: str  # one of KINDS
    location: str  # preset name, hub id, or absolute path of a Hugging Face model directory

    @property
    def random_init(self) -> bool:
        """A preset built with random weights (no files behind it)."""
        return self.kind == "preset" and self.location in RANDOM_PRESETS

    def __str__(self) -> str:
        if self.kind == "preset":
            return f"{self.spec} (preset)"
        if self.kind == "hub" or self.spec == self.location:
            return f"{self.location} ({self.kind})"
        return f"{self.location} ({self.kind} {self.spec})"


@dataclass
class LoadedModel:
    model: Wav2Vec2ForCTC
    processor: Wav2Vec2Processor
    source: ModelSource
    new_head: bool  # a CTC head was created here (its weights are random)

    @property
    def vocabulary(self) -> list[str]:
        vocab = self.processor.tokenizer.get_vocab()
        return sorted(vocab, key=vocab.get)


def resolve(spec: str | os.PathLike, runs_root: str | os.PathLike | None = None) -> ModelSource:
    """Which form a ``--model`` value is (see the module docstring). InputError when it is none of them."""
    from fedw2v import runs

    text = str(spec)
    if text in PRETRAINED_DIRS:
        return ModelSource(text, "preset", str(pretrained_dir(text)))
    if text in PRESETS:
        return ModelSource(text, "preset", text)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(
                f"{path}: is a file; a model is a directory (Hugging Face model, fedw2v run or checkpoint), "
                f"a hub id or {' | '.join(PRESETS)}"
            )
        if runs.is_run_dir(path):
            return ModelSource(text, "run", str(runs.latest_checkpoint(path).resolve()))
        if (path / runs.LATEST).is_file():  # the checkpoints/ directory of a run
            return ModelSource(text, "run", str(runs.latest_checkpoint(path.parent).resolve()))
        if (path / "config.json").is_file():
            is_ckpt = path.resolve().parent.name == "checkpoints"
            return ModelSource(text, "checkpoint" if is_ckpt else "directory", str(path.resolve()))
        raise InputError(f"{path}: not a model directory (no config.json) and not a fedw2v run (no checkpoints/)")
    if _HUB_ID.match(text) and ".." not in text and not text.startswith(("./", "../", "~")):
        return ModelSource(text, "hub", text)
    raise InputError(f"{text}: no such model directory, and not a hub id or preset ({', '.join(PRESETS)})")


def pretrained_dir(name: str = "tiny-pretrained", check: bool = True) -> Path:
    """The directory of a packaged pretrained preset. With ``check``, InputError when its files are missing
    (a checkout without them, or a broken install): `make pretrained` rebuilds them."""
    from importlib.resources import files

    path = Path(str(files("fedw2v").joinpath(*PRETRAINED_DIRS[name])))
    if check:
        missing = [f for f in ("config.json", "model.safetensors", "vocab.json") if not (path / f).is_file()]
        if missing:
            raise InputError(
                f"--model {name}: the packaged model is missing ({path}/{missing[0]})",
                hint="run `make pretrained` to rebuild it (scripts/pretrain_tiny.py), or reinstall fedw2v",
            )
    return path


def default_source(runs_root: str | os.PathLike | None = None) -> ModelSource:
    """The newest run's LATEST checkpoint (``fedw2v transcribe`` without ``--model``)."""
    from fedw2v import runs

    run = runs.newest_run(runs_root)
    if run is None:
        root = Path(runs_root) if runs_root is not None else runs.runs_root()
        raise InputError(
            f"no --model given and no run with a checkpoint under {root}/",
            hint="pass --model (a model directory, hub id or `tiny`) or train one with `fedw2v train`",
        )
    return ModelSource(str(run), "run", str(runs.latest_checkpoint(run).resolve()))


def tiny_config(**overrides: Any) -> Wav2Vec2Config:
    """The ``tiny`` preset's encoder config (no CTC head yet)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(**{**TINY_ENCODER, **overrides})


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode and no gradients (``torch.inference_mode``) for the block; the previous mode is restored."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def hop_samples(config: Any) -> int:
    """Samples between two output frames: the product of the conv strides."""
    hop = 1
    for s in config.conv_stride:
        hop *= int(s)
    return hop


def frame_seconds(config: Wav2Vec2Config, sampling_rate: int = SAMPLE_RATE) -> float:
    """Seconds between two output frames: the product of the conv strides over the sampling rate."""
    return hop_samples(config) / sampling_rate


def receptive_field(config: Any) -> int:
    """Samples one output frame sees: audio shorter than this gives no frame at all."""
    rf, jump = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        rf += (int(k) - 1) * jump
        jump *= int(s)
    return rf


def min_train_samples(config: Any) -> int:
    """Samples a training batch needs at least: one frame, or with SpecAugment time masking (which needs the
    padded batch to have ``mask_time_length`` frames) that many frames."""
    rf = receptive_field(config)
    if getattr(config, "apply_spec_augment", False) and getattr(config, "mask_time_prob", 0) > 0:
        return rf + (int(config.mask_time_length) - 1) * hop_samples(config)
    return rf


def build_processor(vocab: list[str], config: Wav2Vec2Config, feature_extractor: Any = None) -> Wav2Vec2Processor:
    """A CTC tokenizer over ``vocab`` (ids in list order; blank/pad first) and a 16 kHz feature extractor."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    if vocab[:3] != [BLANK, UNK, WORD_DELIMITER]:
        raise ValueError(f"vocabulary must start with {BLANK}, {UNK}, {WORD_DELIMITER}")
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
        tokenizer = Wav2Vec2CTCTokenizer(
            str(vocab_file),
            bos_token=None,
            eos_token=None,
            unk_token=UNK,
            pad_token=BLANK,
            word_delimiter_token=WORD_DELIMITER,
            do_lower_case=False,
            clean_up_tokenization_spaces=False,
        )
    if feature_extractor is None:
        feature_extractor = Wav2Vec2FeatureExtractor(
            feature_size=1,
            sampling_rate=16_000,
            padding_value=0.0,
            do_normalize=True,
            # Models with layer-norm feature encoders are trained with attention masks; group-norm ones without.
            return_attention_mask=config.feat_extract_norm == "layer",
        )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def with_ctc_head(config: Wav2Vec2Config, vocab_size: int) -> Wav2Vec2Config:
    """A copy of an encoder config with a CTC head of ``vocab_size`` outputs (blank = pad = id 0)."""
    config = config.__class__.from_dict(config.to_dict())
    config.vocab_size = vocab_size
    config.pad_token_id = 0
    config.bos_token_id = None
    config.eos_token_id = None
    config.ctc_loss_reduction = "mean"  # per-utterance loss over target length, averaged (as the paper's recipe)
    config.ctc_zero_infinity = True  # an utterance too short for its text gives no gradient instead of inf
    config.architectures = ["Wav2Vec2ForCTC"]
    return config


def load_model(
    spec: str | os.PathLike | ModelSource,
    texts: Iterable[str] | None = None,
    *,
    allow_pickle: bool = False,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    runs_root: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load (or build) a CTC model and its processor from any ``--model`` form, in float32 on the CPU.

    ``texts`` (training transcripts) decide the head: a model whose tokenizer lacks some of their characters,
    or that has no CTC head, gets a new head over `character_vocabulary(texts)`. Without ``texts`` (inference)
    a model must already have a head, except the ``tiny`` preset (random weights, base vocabulary; ``seed``
    fixes them). InputError for anything unusable, naming it.
    """
    source = spec if isinstance(spec, ModelSource) else resolve(spec, runs_root)
    texts = list(texts) if texts is not None else None
    if source.random_init:
        return _build_new_head(source, tiny_config(), texts, None, allow_pickle, cache_dir, seed)
    config = _load_config(source, cache_dir)
    has_head = "Wav2Vec2ForCTC" in (config.architectures or [])
    processor = _load_processor(source, cache_dir) if has_head else None
    if processor is not None:
        missing = vocabulary_covers(processor.tokenizer.get_vocab(), texts) if texts is not None else set()
        if not missing:
            with _quiet_transformers():
                model = _from_pretrained(source, config, allow_pickle, cache_dir)
            return LoadedModel(model, processor, source, new_head=False)
    elif texts is None and has_head:
        raise InputError(
            f"{source.location}: has a CTC head but no tokenizer (vocab.json), so its outputs cannot be read",
            hint="use a complete model directory (fedw2v saves one), or retrain a head with `fedw2v train`",
        )
    elif texts is None:
        raise InputError(
            f"{source.location}: has no CTC head (a pretrained encoder); it cannot transcribe yet",
            hint="fine-tune it first with `fedw2v train MANIFEST --model ...`",
        )
    return _build_new_head(source, config, texts, processor, allow_pickle, cache_dir, seed)


def _build_new_head(source, encoder_config, texts, old_processor, allow_pickle, cache_dir, seed) -> LoadedModel:
    """The one path that attaches a new CTC head over the character vocabulary (presets and pretrained)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    vocab = character_vocabulary(texts or ())
    config = with_ctc_head(encoder_config, len(vocab))
    feature_extractor = old_processor.feature_extractor if old_processor is not None else None
    if feature_extractor is None and not source.random_init:
        feature_extractor = _load_feature_extractor(source, cache_dir)
    processor = build_processor(vocab, config, feature_extractor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source.random_init:
            model = Wav2Vec2ForCTC(config)
        else:
            with _quiet_transformers():
                model = _from_pretrained(source, config, allow_pickle, cache_dir, ignore_mismatched_sizes=True)
    return LoadedModel(model, processor, source, new_head=True)


def _hub_kwargs(source: ModelSource, cache_dir) -> dict[str, Any]:
    return {"cache_dir": str(cache_dir)} if cache_dir is not None and source.kind == "hub" else {}


def _load_config(source: ModelSource, cache_dir) -> Wav2Vec2Config:
    """The model's wav2vec2 config, read as data (no Auto class: nothing from the directory can run)."""
    from transformers import Wav2Vec2Config

    if source.kind != "hub":
        refuse_custom_code(Path(source.location))
    try:
        data, _ = Wav2Vec2Config.get_config_dict(source.location, **_hub_kwargs(source, cache_dir))
    except (OSError, ValueError) as exc:
        raise _not_found(source, exc) from None
    _check_config_json(data, f"{source.location} config.json")
    kind = data.get("model_type")
    if kind != "wav2vec2":
        what = f"a {kind!r} model" if kind else "config.json has no model_type"
        raise InputError(f"{source.location}: {what}; fedw2v trains and runs wav2vec2 models only")
    try:
        return Wav2Vec2Config.from_dict(data)
    except Exception as exc:  # noqa: BLE001 -- the config is the user's file: any failure is its problem
        raise InputError(f"{source.location}: config.json is not a usable wav2vec2 config ({_reason(exc)})") from exc


def refuse_custom_code(directory: Path) -> None:
    """InputError (one line, naming the file and key) for a model directory whose JSON files ask transformers to
    run code of their own (``auto_map``, ``custom_pipelines``): fedw2v never runs code from a model directory,
    so nothing asks whether to (a question on stdout would corrupt ``--json``; an answer on stdin would run it)."""
    for name in CODE_JSON:
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{path}: not readable JSON ({_reason(exc)})") from None
        _check_config_json(data, str(path))


def _check_config_json(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise InputError(f"{where}: is JSON but not an object ({type(data).__name__})")
    for key in CODE_KEYS:
        if key in data:
            raise InputError(
                f"{where}: has {key!r}, which asks to run Python code from the model; fedw2v never runs it",
                hint="use a standard wav2vec2 model directory (fedw2v saves one)",
            )


def _load_processor(source: ModelSource, cache_dir) -> Wav2Vec2Processor | None:
    """The saved tokenizer + feature extractor, or None when the model directory has no tokenizer."""
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2Processor

    kwargs = _hub_kwargs(source, cache_dir)
    try:
        with _quiet_transformers():
            tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(source.location, trust_remote_code=False, **kwargs)
    except Exception:  # noqa: BLE001 -- no (usable) tokenizer files: missing vocab.json raises TypeError, …
        return None
    feature_extractor = _load_feature_extractor(source, cache_dir)
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def _load_feature_extractor(source: ModelSource, cache_dir):
    from transformers import Wav2Vec2FeatureExtractor

    try:
        return Wav2Vec2FeatureExtractor.from_pretrained(source.location, trust_remote_code=False,
                                                        **_hub_kwargs(source, cache_dir))
    except (OSError, ValueError):
        return None  # build_processor makes one from the config


def _from_pretrained(source, config, allow_pickle, cache_dir, ignore_mismatched_sizes=False):
    import torch
    from transformers import Wav2Vec2ForCTC

    if source.kind != "hub":
        _check_weights(Path(source.location), allow_pickle)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: one line is printed below
            model = Wav2Vec2ForCTC.from_pretrained(
                source.location,
                config=config,
                use_safetensors=None if allow_pickle else True,
                weights_only=True,
                dtype=torch.float32,
                ignore_mismatched_sizes=ignore_mismatched_sizes,
                trust_remote_code=False,
                **_hub_kwargs(source, cache_dir),
            )
    except OSError as exc:
        if not allow_pickle and "safetensors" in str(exc):
            raise InputError(
                f"{source.location}: has no safetensors weights, only pickled ones",
                hint="pickled weights can run code when loaded: pass --allow-pickle only if you trust the source",
            ) from None
        raise _not_found(source, exc) from None
    except Exception as exc:  # noqa: BLE001 -- a corrupt, truncated, hostile or mismatched weights file
        import pickle

        reason = (
            "a damaged pickle, or one that would run code: pickles are loaded with torch's weights_only"
            if isinstance(exc, pickle.UnpicklingError) else f"{type(exc).__name__}: {_reason(exc)[:200]}"
        )
        raise InputError(f"{source.location}: cannot load the model weights ({reason})",
                         hint="the weights file is damaged or does not match config.json") from exc
    return model


def _check_weights(path: Path, allow_pickle: bool) -> None:
    if any((path / name).is_file() for name in SAFE_WEIGHTS):
        return
    pickled = [name for name in PICKLED_WEIGHTS if (path / name).is_file()]
    if pickled and not allow_pickle:
        raise InputError(
            f"{path}: weights are pickled ({pickled[0]}), which can run code when loaded; refusing",
            hint="pass --allow-pickle only if you trust the source, or convert the weights to safetensors",
        )
    if not pickled:
        raise InputError(f"{path}: no model weights (model.safetensors) in the directory")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text and text[0] else type(exc).__name__


def _not_found(source: ModelSource, exc: BaseException) -> InputError:
    reason = _reason(exc)
    if source.kind == "hub":
        return InputError(
            f"{source.location}: not a local directory and not available from the Hugging Face Hub ({reason})",
            hint="check the name, the network, or HF_HUB_OFFLINE and the cache",
        )
    return InputError(f"{source.location}: cannot load the model ({reason})")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports (missing/unused weights): fedw2v says what it did itself."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def save_model(
    model: Wav2Vec2ForCTC,
    processor: Wav2Vec2Processor,
    out_dir: str | os.PathLike,
    extra_json: dict[str, Any] | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write a complete Hugging Face model directory atomically (temporary directory, fsync, rename).

    ``extra_json`` maps file names to JSON-serialisable objects written beside the model (e.g. state.json);
    ``extra_files(directory)`` writes more files there (e.g. the training state). An existing ``out_dir`` is
    replaced only once the new one is complete.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with _quiet_transformers():
            model.save_pretrained(tmp)
            processor.save_pretrained(tmp)
            # transformers 5 nests the feature extractor in processor_config.json; older readers look here.
            if not (tmp / "preprocessor_config.json").exists():
                processor.feature_extractor.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        if extra_files is not None:
            extra_files(tmp)
        if not (tmp / "model.safetensors").is_file() and not (tmp / "model.safetensors.index.json").is_file():
            raise RuntimeError(f"{tmp}: transformers wrote no safetensors weights")
        _fsync_tree(tmp)
        replace_directory(tmp, out)
        _fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def num_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
