"""The server's side of a federation whose data stays on its nodes (Flower's Deployment Engine, no clients
manifest on the server: `SimulateConfig.nodes_hold_data`).

- `NodeSampler`: each round samples among the SuperNodes connected now (the grid's node ids, ascending) with a
  seeded generator whose state is saved with every checkpoint, like `fl.sampling.ClientSampler`; it first waits
  (bounded) until ``min_nodes`` (default: as many as ``--min-fit-clients`` needs) are connected. A resumed run
  continues the same generator, but the node set may differ, so its weights need not equal an uninterrupted run's.
- `NodeFederation.payload`: what every message to a node carries besides the global trainable weights: the
  round-0 checkpoint's configuration and processor files, its parameters that do not train, and the server's
  fedw2v version (the node refuses another). Nodes need nothing from the server's disk.
- `NodeFederation.who` / `learn`: a node reports its client's id in its replies; metrics.jsonl names both (the
  client id where known). Two nodes claiming one client in a round: the second one's update is refused.
- Federated evaluation: at each evaluation round the server sends every connected node an evaluate message with
  the global model and logs each node's error counts on its local test split ("node_evaluate" events), which is
  what `fedw2v evaluate RUN --participation` reads for such a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedw2v.errors import RunFailed
from fedw2v.fl.sampling import SeededDraw

NODE_WAIT_S = 600.0  # how long a round waits for enough SuperNodes before the run stops
COUNT_KEYS = ("utterances", "ref_words", "substitutions", "deletions", "insertions", "ref_chars", "char_errors")


class NodeSampler(SeededDraw):
    """Draws up to ``per_round`` distinct connected node ids per round from a PCG64 generator seeded with ``seed``
    (same interface as `ClientSampler`: ``sample()`` and a JSON-able ``state``)."""

    def __init__(self, grid: Any, per_round: int, seed: int, needed: int, report: Callable[[dict], None],
                 wait_s: float = NODE_WAIT_S):
        super().__init__(seed)
        self.grid, self.per_round, self.needed, self.report, self.wait_s = grid, per_round, needed, report, wait_s

    def connected(self) -> list[int]:
        return connected_nodes(self.grid, self.needed, self.report, self.wait_s)

    def sample(self) -> list[int]:
        return self.draw(self.connected(), self.per_round)


def connected_nodes(grid: Any, needed: int, report: Callable[[dict], None], wait_s: float = NODE_WAIT_S) -> list[int]:
    """The connected node ids, ascending, once at least ``needed`` (and one) are; RunFailed after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    said = -1
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) >= max(1, needed):
            return nodes
        if len(nodes) != said:
            report({"event": "waiting_for_nodes", "connected": len(nodes), "needed": needed})
            said = len(nodes)
        if time.monotonic() > deadline:
            raise RunFailed(f"{len(nodes)} SuperNodes connected after {wait_s:g} s, {needed} needed",
                            hint="start the participants' SuperNodes, or lower min-nodes / --min-fit-clients")
        time.sleep(0.5)


def model_files(model: Any, processor: Any) -> dict[str, str]:
    """The model's configuration and processor files by name, as a checkpoint holds them (no weights); made
    from memory, so they exist before the round-0 checkpoint does (the round-0 evaluation needs them)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fedw2v-files-") as tmp:
        model.config.to_json_file(str(Path(tmp) / "config.json"))
        processor.save_pretrained(tmp)
        return {p.name: p.read_text() for p in sorted(Path(tmp).iterdir()) if p.is_file() and p.suffix == ".json"}


class NodeFederation:
    """The server's view of the nodes of one run: the payload of its messages, which client each node serves,
    and federated evaluation."""

    def __init__(self, grid: Any, config: Any, base_model: str, emit: Callable[[dict], None],
                 report: Callable[[dict], None]):
        self.grid, self.config, self.base_model, self.emit, self.report = grid, config, base_model, emit, report
        self.client_of: dict[int, int] = {}  # node id -> the client id it reported last
        self._payload: tuple[tuple[str, ...], dict[str, Any]] | None = None

    def sampler(self) -> NodeSampler:
        return NodeSampler(self.grid, self.config.clients_per_round, self.config.seed,
                           self.config.min_nodes or self.config.required_successes, self.report)

    def payload(self, lm: Any) -> dict[str, Any]:
        """The records every message carries besides the trainable weights: the files and the parameters that do
        not train now (built again only when that set changes: the feature encoder is frozen after the round-0
        evaluation, whose message carries every parameter as trainable)."""
        frozen_names = tuple(name for name, p in lm.model.named_parameters() if not p.requires_grad)
        if self._payload is None or self._payload[0] != frozen_names:
            from flwr.app import ConfigRecord

            from fedw2v import __version__
            from fedw2v.fl.node_data import VERSION_KEY
            from fedw2v.fl.records import record_from_arrays

            frozen = {name: p for name, p in lm.model.named_parameters() if not p.requires_grad}
            self._payload = (frozen_names, {"model": ConfigRecord(model_files(lm.model, lm.processor)),
                                            "frozen": record_from_arrays(frozen, packed=True),
                                            "node": ConfigRecord({VERSION_KEY: __version__})})
        return self._payload[1]

    # ---------------------------------------------------------------- which client a node serves

    def learn(self, results: dict[int, dict]) -> None:
        """Record the client id each replying node reported ({node id: fit result}); a second node claiming a
        client already served by another node in this round fails."""
        served: dict[int, int] = {}
        for node in sorted(results):
            res = results[node]
            client = res.get("client_id")
            if client is None or client < 0:
                continue
            if client in served and res["error"] is None:
                res.update(error=f"client {client} is already served by SuperNode {served[client]} (each "
                                 "SuperNode needs its own client's manifest)", arrays=None)
                continue
            served[client] = node
            self.client_of[node] = client

    def who(self, node: int, res: dict | None = None) -> dict[str, Any]:
        """The metrics.jsonl identity of a node's result: its client id (None while unknown) and node id."""
        client = (res or {}).get("client_id")
        if client is None or client < 0:
            client = self.client_of.get(node)
        return {"client": client, "node": node}

    def sampled(self, nodes: list[int]) -> dict[str, Any]:
        """The round_start fields of a round's sample: the node ids and the clients known to be behind them."""
        return {"clients": sorted(self.client_of[n] for n in nodes if n in self.client_of), "nodes": nodes}

    # ---------------------------------------------------------------- federated evaluation

    def ask_evaluate(self, round_: int, lm: Any) -> dict[str, int]:
        """Send every connected node the global model to score on its local test split; {message id: node}."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        from fedw2v.fl.records import record_from_arrays
        from fedw2v.weights import trainable_arrays

        nodes = connected_nodes(self.grid, self.config.min_nodes or self.config.required_successes, self.report)
        record = record_from_arrays(trainable_arrays(lm.model), packed=True)
        ttl = self.config.round_timeout or None
        messages = [Message(RecordDict({"arrays": record, "config": ConfigRecord({"round": round_}),
                                        **self.payload(lm)}), dst_node_id=n, message_type=MessageType.EVALUATE,
                            group_id=f"evaluate-{round_}", ttl=ttl) for n in nodes]
        pushed = set(self.grid.push_messages(messages))
        return {m.metadata.message_id: n for m, n in zip(messages, nodes) if m.metadata.message_id in pushed}

    def collect_evaluate(self, round_: int, asked: dict[str, int]) -> None:
        """Wait for the evaluation replies (at most --round-timeout, when set) and log one "node_evaluate" event
        per node, by node id; a node that does not answer is logged with its error."""
        timeout = self.config.round_timeout or None
        deadline = None if timeout is None else time.monotonic() + timeout
        pending, got = dict(asked), {}
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is not None:
                    got[node] = evaluation_result(reply)
            if pending and deadline is not None and time.monotonic() >= deadline:
                for node in pending.values():
                    got[node] = {"error": f"no reply within {timeout:g} s (--round-timeout)", "client_id": None}
                break
            if pending:
                time.sleep(0.1)
        for node in sorted(got):
            res = got[node]
            if res["error"] is None and res.get("client_id") is not None:
                self.client_of[node] = res["client_id"]
            self.emit({"event": "node_evaluate", "round": round_, **self.who(node, res),
                       **{k: v for k, v in res.items() if k != "client_id"}})


def evaluation_result(reply: Any) -> dict[str, Any]:
    """One node's evaluation reply as logged: error counts (and WER) or the error."""
    if reply.has_error():
        return {"error": "client app crashed: " + " ".join(str(reply.error.reason).split())[:300], "client_id": None}
    status, metrics = reply.content["status"], dict(reply.content["metrics"])
    client = int(status["client-id"])
    out: dict[str, Any] = {"client_id": client if client >= 0 else None, "error": str(status["error"]) or None,
                           "seconds": float(metrics.get("seconds", 0.0))}
    if out["error"] is None:
        counts = {k: int(metrics[k.replace("_", "-")]) for k in COUNT_KEYS}
        errors = counts["substitutions"] + counts["deletions"] + counts["insertions"]
        out.update(counts, word_errors=errors, wer=errors / counts["ref_words"] if counts["ref_words"] else None)
    return out
