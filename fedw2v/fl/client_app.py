"""The Flower ClientApp: one client's local training, in a worker process that keeps its model.

A training message names the client (`client-id`), the round and where everything is (the partitioned
manifest, the run's round-0 checkpoint), and carries the global weights (trainable parameters, by name).
Under the Deployment Engine with the data on the nodes it names neither: the SuperNode's node config says
where its own client's data is, and the model comes in the message (`fedw2v.fl.node_data`), which also
answers the server's federated-evaluation messages.
The worker builds its model once from the round-0 checkpoint and loads each round's weights into it; it
reads the manifest once. It trains the client's local train split with `fedw2v.train.local_train`, with as
many torch threads as the CPU cores Ray gave the client (``--cpus-per-client``, at least one; whatever
``OMP_NUM_THREADS`` the process inherited), scores its local dev split (WER) when it has one, and replies with
its weights, sample count, loss and dev WER (and the threads it used and the Ray node it ran on, for
metrics.jsonl) — or, if anything fails (unreadable audio, out of memory, a non-finite loss), with the error text
and no weights, so the server leaves it out of the round and logs why. With --dp the reply passes Flower's
clipping (central) or local-DP mod on its way out (`privacy.dp_client.privacy_mod`).
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedw2v.fl.records import arrays_from_record, is_packed, record_from_arrays
from fedw2v.privacy.dp_client import privacy_mod


def client_seed(seed: int, round_: int, client_id: int) -> int:
    """The local-training seed of one client in one round: independent of which worker runs it."""
    import numpy as np

    return int(np.random.SeedSequence([seed, round_, client_id]).generate_state(1)[0])


@dataclass(frozen=True)
class TrainJob:
    client_id: int
    round: int
    manifest: str  # the partitioned manifest
    corpus_root: str  # override of the manifest's corpus root ('' = the stored one)
    base_model: str  # the run's round-0 checkpoint (the model every worker builds once)
    train_config: dict  # fedw2v.train.TrainConfig fields
    seed: int
    allow_outside_audio: bool = False  # the run's --allow-outside-audio (audio paths outside the corpus root)

    @classmethod
    def from_record(cls, config: Any) -> TrainJob:
        return cls(
            client_id=int(config["client-id"]), round=int(config["round"]), manifest=str(config["manifest"]),
            corpus_root=str(config["corpus-root"]), base_model=str(config["base-model"]),
            train_config=json.loads(str(config["train-config"])), seed=int(config["seed"]),
            allow_outside_audio=bool(config.get("allow-outside-audio", False)),
        )

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({
            "client-id": self.client_id, "round": self.round, "manifest": self.manifest,
            "corpus-root": self.corpus_root, "base-model": self.base_model,
            "train-config": json.dumps(self.train_config), "seed": self.seed,
            "allow-outside-audio": self.allow_outside_audio,
        })


class Worker:
    """What one worker process keeps between client calls: the model (built once per base checkpoint) and
    the manifests it has read. One instance per process (`WORKER`)."""

    def __init__(self) -> None:
        self._model: tuple[str, Any] | None = None
        self._manifests: dict[tuple[str, str, bool], Any] = {}
        self.builds = 0  # how many times a model was built in this process (tests check it stays 1)

    @staticmethod
    def set_threads() -> int:
        """Torch CPU threads = the cores Ray assigned to this worker (at least 1; as they are outside a Ray
        worker); returns the number in use. Ray's own default (OMP_NUM_THREADS = the cores) gives way to an
        OMP_NUM_THREADS the process inherited, so it is set here explicitly."""
        import torch

        from fedw2v.device import set_cpu_threads

        cpus = ray_worker_cpus()
        return set_cpu_threads(cpus) if cpus else torch.get_num_threads()

    def model(self, base: str, shipped: Any = None, trained: dict | None = None) -> Any:
        """The model of the run whose round-0 checkpoint is `base`, built once. With `shipped` (the checkpoint's
        files and untrained weights, sent on a Ray cluster) it is built from those and the `trained` weights of
        the job, and `base` only names it: the run directory may live on another machine."""
        if self._model is None or self._model[0] != base:
            from fedw2v.model import load_model

            self._model = None  # free the old one first
            if shipped is None:
                self._model = (base, load_model(base))
            else:
                self._model = (base, _load_shipped(*shipped, trained or {}))
            self.builds += 1
        return self._model[1]

    def has_model(self, base: str) -> bool:
        return self._model is not None and self._model[0] == base

    def keep_model(self, base: str, loaded: Any) -> None:
        """Keep a model built elsewhere (one that came in a message) under the name ``base``."""
        self._model = (base, loaded)
        self.builds += 1

    def keep_manifest(self, key: tuple[str, str, bool], manifest: Any) -> None:
        """Keep a manifest read elsewhere (a SuperNode's own) under ``key`` = (manifest, corpus root, allow
        outside audio), the key `utterances` looks it up by."""
        self._manifests = {key: manifest}

    def utterances(self, job: TrainJob, local_split: str) -> list:
        from fedw2v import manifest as mf
        from fedw2v.batching import utterances_from_manifest

        key = (job.manifest, job.corpus_root, job.allow_outside_audio)
        if key not in self._manifests:
            self._manifests = {key: mf.read(job.manifest, allow_outside_audio=job.allow_outside_audio)}
        return utterances_from_manifest(
            self._manifests[key], split="train", local_split=local_split, client_id=job.client_id,
            corpus_root=job.corpus_root or None,
        )


WORKER = Worker()


def _load_shipped(files: Any, frozen: Any, trained: dict) -> Any:
    """A model directory rebuilt in a private temporary directory from shipped records, loaded like any other
    (`load_model`: safetensors only), then deleted."""
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    from fedw2v.model import load_model

    tmp = Path(tempfile.mkdtemp(prefix="fedw2v-base-"))
    try:
        for name, data in dict(files).items():
            (tmp / Path(name).name).write_bytes(bytes(data))
        weights = {**arrays_from_record(frozen), **trained}
        save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        return load_model(str(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ray_worker_cpus() -> float | None:
    """The CPU cores Ray assigned to this process's actor (the client's --cpus-per-client), or None when this
    process is not a Ray worker (the driver, or a ClientApp run without Ray)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except (AssertionError, RuntimeError):  # "only available when the process is a worker"
        return None


def run_train(content: RecordDict, worker: Worker = WORKER, node_config: Any = None) -> RecordDict:
    """Handle one training message's content; never raises (a failure is a reply with `error` set). A job that
    names no manifest takes the data of this SuperNode's ``node_config`` (`fl.node_data.node_job`)."""
    from fedw2v.fl.node_data import node_job

    t0 = time.perf_counter()
    config = content["config"]
    client_id = int(config["client-id"])
    try:
        job = node_job(TrainJob.from_record(config), content, node_config or {}, worker)
        client_id = job.client_id
        shipped = (content["base-files"], content["base-arrays"]) if "base-files" in content else None
        threads = worker.set_threads()
        metrics, arrays = _train(job, arrays_from_record(content["arrays"]), worker, shipped)
        reply = RecordDict({
            "arrays": record_from_arrays(arrays, packed=is_packed(content["arrays"])),  # as the server sent them
            "metrics": MetricRecord({**metrics, "seconds": time.perf_counter() - t0}),
            "status": ConfigRecord({"client-id": client_id, "error": "", "builds": worker.builds,
                                    "threads": threads, "node": ray_node()}),
        })
    except BaseException as exc:  # noqa: BLE001 -- reported to the server, which leaves the client out
        if isinstance(exc, KeyboardInterrupt):
            raise
        _free_cuda()
        reply = RecordDict({
            "metrics": MetricRecord({"seconds": time.perf_counter() - t0}),
            "status": ConfigRecord({
                "client-id": client_id, "error": _one_line(exc), "builds": worker.builds, "node": ray_node(),
                "traceback": "".join(traceback.format_exception(exc))[-4000:],
            }),
        })
    return reply


def _train(job: TrainJob, global_arrays: dict, worker: Worker, shipped: Any = None) -> tuple[dict, dict]:
    from fedw2v.decode import Decoder
    from fedw2v.weights import load_arrays, non_finite, trainable_arrays
    from fedw2v.metrics import score
    from fedw2v.config.train import TrainConfig
    from fedw2v.train import local_train, set_feature_encoder_frozen

    lm = worker.model(job.base_model, shipped, global_arrays)
    train_config = replace(TrainConfig(**job.train_config), seed=client_seed(job.seed, job.round, job.client_id))
    set_feature_encoder_frozen(lm.model, train_config.freeze_feature_encoder)
    expected = set(trainable_arrays_names(lm.model))
    if set(global_arrays) != expected:
        missing = sorted(expected - set(global_arrays))[:3]
        raise RuntimeError(f"global weights do not match the model's trainable parameters (e.g. {missing})")
    load_arrays(lm.model, global_arrays)
    train = worker.utterances(job, "train")
    if not train:
        raise RuntimeError(f"client {job.client_id} has no local train utterances")
    dev = worker.utterances(job, "dev")
    m = local_train(lm.model, lm.processor, train, train_config, dev=dev or None)
    if m.samples == 0:
        raise RuntimeError(
            f"client {job.client_id}: none of its {len(train)} utterances lies within the training duration filter"
        )
    if m.steps == 0:
        raise RuntimeError(
            f"client {job.client_id}: no optimizer step was taken ({m.skipped_batches} of {m.batches} batches had "
            "a non-finite loss or gradient)"
        )
    arrays = trainable_arrays(lm.model)
    bad = non_finite(arrays)
    if bad:
        raise RuntimeError(f"client {job.client_id}: non-finite weights after training ({', '.join(bad[:3])})")
    metrics: dict[str, Any] = {
        "samples": m.samples, "filtered": m.filtered, "steps": m.steps, "skipped-batches": m.skipped_batches,
        "loss": float(m.loss) if m.loss is not None else float("nan"), "train-seconds": m.seconds,
        "audio-seconds": m.audio_seconds,
    }
    if dev:
        hyps = Decoder(lm.model, lm.processor).decode_utterances(dev)
        metrics["dev-wer"] = score([u.text for u in dev], hyps).wer
        metrics["dev-utterances"] = len(dev)
    return metrics, arrays


def ray_node() -> str:
    """The id of the Ray node this worker runs on ('' outside Ray: the Deployment Engine, in-process tests)."""
    import sys

    ray = sys.modules.get("ray")  # never imported (nor a Ray started) just to ask
    try:
        return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else ""
    except Exception:  # noqa: BLE001 -- a fact for the log, never a reason to fail the client
        return ""


def trainable_arrays_names(model: Any) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:500]


def _free_cuda() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


app = ClientApp()


@app.train(mods=[privacy_mod])  # --dp: Flower's fixedclipping_mod / LocalDpMod on the reply (privacy.dp_client)
def train(msg: Message, context: Context) -> Message:
    return Message(run_train(msg.content, node_config=context.node_config), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation (data on the SuperNodes): the global model on this node's local test split."""
    from fedw2v.fl.node_data import run_evaluate

    return Message(run_evaluate(msg.content, context.node_config, WORKER), reply_to=msg)
