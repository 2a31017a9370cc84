"""The ClientApp's side of a federation whose data stays on its nodes (Flower's Deployment Engine).

Each participant starts a SuperNode with their own client's manifest in its node config, e.g.

    flower-supernode ... --node-config "manifest='/data/me/client.parquet'"

Keys (`NodeData`): ``manifest`` (required: a manifest holding one client's rows, as `fedw2v partition
--export-clients` writes), ``corpus-root`` (where the audio is, when not where the manifest says: by default the
manifest's corpus root, or the ``audio/`` folder beside an exported manifest that brought its audio along) and
``client-id`` (the id this node reports, when the operator numbers participants who made their own manifest).

The server then sends no manifest path and no model location (``TrainJob.manifest == ""``): `node_job` fills
the job from the node config, and the model comes in the message itself (`fedw2v.fl.nodes.ModelPayload`): the
round-0 checkpoint's configuration and processor files, its parameters that do not train, and the global
trainable weights. Nothing of the server's disk is needed on a node. In simulation (the server names its
clients manifest) `node_job` leaves the job as it is and the node config is never read.

`run_evaluate` answers the server's federated-evaluation messages: the global model's error counts on the
node's local test split, so the server learns how well it serves every participant without their speech.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedw2v.errors import InputError

MANIFEST_KEY = "manifest"
CORPUS_ROOT_KEY = "corpus-root"
CLIENT_ID_KEY = "client-id"
VERSION_KEY = "fedw2v-version"


@dataclass(frozen=True)
class NodeData:
    """This node's own client: its manifest (rows numbered with the id the node reports), where its audio is."""

    manifest: str
    corpus_root: str  # '' : the manifest's own
    client_id: int  # the id this node reports (its manifest's, or the node config's client-id)
    data: Any = field(compare=False, repr=False, default=None)  # the Manifest, its rows carrying client_id

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeData:
        """Read and check the node's manifest; InputError (one line, naming the file) when it cannot serve."""
        from fedw2v import manifest as mf
        from fedw2v.partition.export import BESIDE_KEY

        path = str(node_config.get(MANIFEST_KEY, "") or "")
        if not path:
            raise InputError("this SuperNode has no manifest in its --node-config",
                             hint="start it with --node-config \"manifest='/path/client.parquet'\" "
                                  "(fedw2v partition --export-clients)")
        m = mf.read(path)
        ids = m.client_ids
        if len(ids) != 1:
            what = "no client" if not ids else f"{len(ids)} clients"
            raise InputError(f"{path}: holds {what}; a SuperNode serves exactly one",
                             hint="give it the client's own manifest (fedw2v partition --export-clients DIR)")
        root = str(node_config.get(CORPUS_ROOT_KEY, "") or "")
        if not root and m.info.extra.get(BESIDE_KEY):
            root = str(Path(path).resolve().parent / str(m.info.extra[BESIDE_KEY]))
        client = _reported_id(node_config.get(CLIENT_ID_KEY), ids[0])
        return cls(str(Path(path).resolve()), root, client, _renumbered(m, client) if client != ids[0] else m)

    def utterances(self, local_split: str) -> list:
        """The node's utterances of one local split."""
        from fedw2v.batching import utterances_from_manifest

        return utterances_from_manifest(self.data, split="train", local_split=local_split, client_id=self.client_id,
                                        corpus_root=self.corpus_root or None)


def _reported_id(given: Any, own: int) -> int:
    if given in (None, ""):
        return own
    try:
        client = int(given)
    except (TypeError, ValueError):
        raise InputError(f"--node-config client-id={given!r}: not a whole number") from None
    if client < 0:
        raise InputError(f"--node-config client-id={client}: must be >= 0")
    return client


def _renumbered(m: Any, client: int) -> Any:
    """The manifest with its one client's rows numbered ``client`` (in memory only)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from fedw2v import manifest as mf

    col = m.table.column("client_id")
    ids = pc.if_else(pc.is_valid(col), pa.scalar(client, pa.int32()), pa.scalar(None, pa.int32()))
    index = m.table.column_names.index("client_id")
    return mf.Manifest(m.table.set_column(index, m.table.schema.field("client_id"), ids), m.info)


def check_version(content: Any) -> None:
    """The server and this node run the same fedw2v (the messages' layout is that version's)."""
    from fedw2v import __version__

    theirs = str(content["node"][VERSION_KEY]) if "node" in content.config_records else "unknown"
    if theirs != __version__:
        raise InputError(f"the server runs fedw2v {theirs}, this SuperNode {__version__}",
                         hint="install the server's version on this node")


def node_job(job: Any, content: Any, node_config: Mapping[str, Any], worker: Any) -> Any:
    """The server's `TrainJob` made concrete on this node: its client id, manifest and corpus root from the node
    config, the model from the message. A job naming the server's manifest (simulation) is returned as it is."""
    if job.manifest:
        return job
    check_version(content)
    data = NodeData.from_node_config(node_config)
    worker.keep_manifest((data.manifest, data.corpus_root, False), data.data)  # the node's audio: inside its root
    return replace(job, client_id=data.client_id, manifest=data.manifest, corpus_root=data.corpus_root,
                   base_model=adopt_model(content, worker), allow_outside_audio=False)


# ---------------------------------------------------------------- the model that came with the message


def adopt_model(content: Any, worker: Any) -> str:
    """Build the message's model (configuration + processor files, frozen parameters) once per worker and keep
    it there; returns the key `worker.model` knows it by."""
    files = {str(k): str(v) for k, v in dict(content["model"]).items()}
    frozen = sorted(content["frozen"].keys())  # a model built with other parameters frozen is built again
    key = "message-model:" + hashlib.sha256(json.dumps([files, frozen], sort_keys=True).encode()).hexdigest()[:16]
    if not worker.has_model(key):
        worker.keep_model(key, build_model(files, content["frozen"]))
    return key


def build_model(files: Mapping[str, str], frozen_record: Any) -> Any:
    """A `LoadedModel` from a checkpoint's configuration and processor files and the parameters that do not
    train (the trainable ones are loaded from each message)."""
    import tempfile

    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Processor
    from transformers.initialization import no_init_weights

    from fedw2v.fl.records import arrays_from_record
    from fedw2v.model import LoadedModel, ModelSource, _quiet_transformers, refuse_custom_code
    from fedw2v.weights import load_arrays

    with tempfile.TemporaryDirectory(prefix="fedw2v-model-") as tmp:
        for name, text in files.items():
            if os.sep in name or name.startswith("."):
                raise InputError(f"model file name {name!r} from the server is not a plain file name")
            (Path(tmp) / name).write_text(text)
        refuse_custom_code(Path(tmp))  # the server's files are data: no code named in them ever runs
        with _quiet_transformers():
            config = Wav2Vec2Config.from_pretrained(tmp, trust_remote_code=False)
            processor = Wav2Vec2Processor.from_pretrained(tmp, trust_remote_code=False)
            with no_init_weights():  # every parameter is overwritten below or by the message's weights
                model = Wav2Vec2ForCTC(config)
    load_arrays(model, arrays_from_record(frozen_record))
    return LoadedModel(model, processor, ModelSource("server", "checkpoint", "the server's round-0 checkpoint"),
                       new_head=False)


# ---------------------------------------------------------------- federated evaluation


def run_evaluate(content: Any, node_config: Mapping[str, Any], worker: Any) -> Any:
    """Handle one federated-evaluation message: the global model's error counts on this node's local test
    split. Never raises (a failure is a reply with ``error`` set)."""
    from flwr.app import ConfigRecord, MetricRecord, RecordDict

    t0 = time.perf_counter()
    client = -1
    try:
        check_version(content)
        data = NodeData.from_node_config(node_config)
        client = data.client_id
        counts = _evaluate(data, content, worker)
        return RecordDict({"metrics": MetricRecord({**counts, "seconds": time.perf_counter() - t0}),
                           "status": ConfigRecord({"client-id": client, "error": ""})})
    except Exception as exc:  # noqa: BLE001 -- reported to the server, which logs it
        from fedw2v.fl.client_app import _one_line

        return RecordDict({"metrics": MetricRecord({"seconds": time.perf_counter() - t0}),
                           "status": ConfigRecord({"client-id": client, "error": _one_line(exc)})})


def _evaluate(data: NodeData, content: Any, worker: Any) -> dict[str, int]:
    from fedw2v.decode import Decoder
    from fedw2v.device import resolve_device
    from fedw2v.fl.records import arrays_from_record
    from fedw2v.metrics import normalize_pair, total, utterance_counts
    from fedw2v.weights import load_arrays

    lm = worker.model(adopt_model(content, worker))
    load_arrays(lm.model, arrays_from_record(content["arrays"]))
    tests = data.utterances("test")
    hyps = Decoder(lm.model, lm.processor, resolve_device("auto")).decode_utterances(tests) if tests else []
    norm = data.data.info.normalization
    counts = total(utterance_counts(*normalize_pair(u.text, h, norm)) for u, h in zip(tests, hyps))
    return {"utterances": counts.utterances, "ref-words": counts.ref_words, "substitutions": counts.substitutions,
            "deletions": counts.deletions, "insertions": counts.insertions, "ref-chars": counts.ref_chars,
            "char-errors": counts.char_errors}
