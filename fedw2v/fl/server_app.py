"""The Flower ServerApp: sampling, aggregation, evaluation, checkpoints and resume (the Message API).

Each round: sample `clients_per_round` client ids (seeded generator, state checkpointed); send every sampled
client the global trainable weights and its job; collect replies as they arrive (the live display counts
them); leave out failed clients (their error is logged); stop with `RunFailed` when fewer than
`required_successes` succeeded; weight the rest (`fl.aggregate.client_weights`) and average them in client-id
order (`fl.aggregate.weighted_average`); evaluate the global model on the whole eval split every
`eval_every` rounds; write the checkpoint (HF model dir + state.json), then replace checkpoints/LATEST, prune,
plot and log. Under the Deployment Engine with the data on the SuperNodes (no clients manifest) the nodes are
the clients: sampling, message payload and federated evaluation are `fl.nodes`'s. In a footprint round the
privacy hook (`privacy.online.OnlineFootprints`) sees the global model before the clients train and their successful updates after, and stores the updates' footprints. With --dp the
DP hook (`privacy.dp.DpServer`) adds its keys to the training messages, stops before a round would exceed the
privacy budget, clips and noises around the average and keeps its state (accountant, noise generator) in
state.json. metrics.jsonl events of a round are written in a fixed order (fit results by client id), so an
interrupted and resumed run logs exactly what an uninterrupted one does, timings aside.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedw2v.errors import InputError, RunFailed
from fedw2v.config.simulate import SimulateConfig
from fedw2v.fl.nodes import NodeFederation
from fedw2v.privacy.dp import DpServer
from fedw2v.privacy.online import OnlineFootprints

Reporter = Callable[[dict], None]
TIMING_KEYS = ("seconds", "time", "train_seconds", "eval_seconds", "aggregate_seconds")


@dataclass
class RunState:
    """What state.json holds: enough to continue exactly where the run stopped."""

    round: int = 0
    sampler: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # {"round", "wer", "cer", "loss"} per evaluation
    best_round: int | None = None
    best_wer: float | None = None
    seed: int = 0
    privacy: dict = field(default_factory=dict)  # --dp: `DpServer.state_dict()`

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "sampler": self.sampler, "history": self.history,
                "best_round": self.best_round, "best_wer": self.best_wer, "seed": self.seed, "privacy": self.privacy}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        return cls(int(data["round"]), data["sampler"], list(data.get("history", [])), data.get("best_round"),
                   data.get("best_wer"), int(data.get("seed", 0)), dict(data.get("privacy") or {}))


def check_run_dir(config: SimulateConfig) -> None:
    """A new run needs an unused run directory; a resumed one needs a checkpoint and the same configuration
    (config.json), except the options declared resumable. Writes config.json for a new run."""
    from fedw2v import runs

    run = Path(config.run_dir)
    recorded = run / runs.CONFIG
    if config.resume:
        if not (run / "checkpoints" / runs.LATEST).is_file():
            raise InputError(f"{run}: nothing to resume (no checkpoints/{runs.LATEST})", hint="start it without --resume")
        if recorded.is_file():
            diff = config.differences(runs.read_json(recorded))
            if diff:
                raise InputError(
                    f"{run}: cannot resume with a different configuration: {', '.join(diff)} differ from "
                    f"{runs.CONFIG}", hint="use the run's original options, or a new --run-dir",
                )
        runs.write_json_atomic(recorded, config.to_dict())
        return
    if runs.checkpoint_rounds(run) or (run / runs.METRICS).is_file():
        raise InputError(
            f"{run}: already holds a run", hint="continue it with --resume, or choose another --run-dir"
        )
    runs.write_json_atomic(recorded, config.to_dict())


class Halt:
    """Stops a running `Server` from another thread: set it (with the reason) and the server raises `RunFailed` at
    its next wait for replies or nodes (within 0.05 s). `fedw2v simulate` sets it when Ray dies, on Ctrl-C and
    when Flower's engine ends, so the server thread never waits for replies that cannot come. `probe` (optional)
    says at once whether the backend is down ('' when it answers)."""

    def __init__(self, probe: Callable[[], str] | None = None) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.probe = probe

    def backend_down(self) -> str:
        return self.probe() if self.probe is not None else ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class Server:
    """One federated run on one Grid; `run()` goes from the current state to `config.rounds`."""

    def __init__(self, grid: Grid, config: SimulateConfig, reporter: Reporter | None = None,
                 halt: Halt | None = None):
        from fedw2v import manifest as mf
        from fedw2v import runs

        self.grid = grid
        self.config = config
        self.halt = halt
        self.report = reporter or (lambda event: None)
        self.run_dir = Path(config.run_dir)
        self.log = runs.MetricsLog(self.run_dir)
        # the data on the SuperNodes (Deployment Engine): no clients manifest here, the nodes are the clients
        outside = config.allow_outside_audio
        self.manifest = (mf.read(config.clients_manifest, allow_outside_audio=outside) if config.clients_manifest
                         else None)
        self.eval_manifest = (mf.read(config.eval_manifest, allow_outside_audio=outside) if config.eval_manifest
                              else self.manifest)
        self.client_ids = self.manifest.client_ids if self.manifest is not None else []
        if self.manifest is not None and not self.client_ids:
            raise InputError(
                f"{config.clients_manifest}: no client_id is set", hint="make clients with `fedw2v partition`"
            )
        self.train_config = config.train_config()
        # what every TrainJob names ('': the node's own data, `fl.node_data`)
        self._job_manifest = str(Path(config.clients_manifest).resolve()) if self.manifest is not None else ""
        self._job_train_config = self.train_config.to_dict()
        self.base_model = str(self.run_dir / "checkpoints" / runs.checkpoint_name(0))
        self.nodes = None if self.manifest is not None else NodeFederation(grid, config, self.base_model,
                                                                             self._emit, self.report)
        # on a Ray cluster the workers cannot see the run directory: the round-0 model travels with every job
        self.ships_base = bool(config.ray_address)
        self._base: dict[str, Any] | None = None
        self.footprints = OnlineFootprints(config, self.manifest or self.eval_manifest,
                                           self.base_model)  # --footprint-rounds
        self.dp = DpServer(config, len(self.client_ids))  # --dp

    # ---------------------------------------------------------------- the run

    def run(self) -> RunState:
        from fedw2v.fl.sampling import ClientSampler
        from fedw2v.train import set_feature_encoder_frozen

        check_run_dir(self.config)
        sampler = (self.nodes.sampler() if self.nodes is not None
                   else ClientSampler(self.client_ids, self.config.clients_per_round, self.config.seed))
        if self.config.resume:
            state, lm = self._resume(sampler)
        else:
            state, lm = self._start(sampler)
        set_feature_encoder_frozen(lm.model, self.config.freeze_feature_encoder)
        for r in range(state.round + 1, self.config.rounds + 1):
            self._round(r, sampler, state, lm)
        return state

    def _start(self, sampler: Any) -> tuple[RunState, Any]:
        import pyarrow.compute as pc

        from fedw2v.model import load_model, num_parameters

        t0 = time.perf_counter()
        # a new CTC head's characters: the clients' texts, or with the data on the nodes the server's own
        train_texts = (self.manifest.table.filter(pc.equal(self.manifest.table.column("split"), "train"))
                       if self.manifest is not None else self.eval_manifest.table)
        lm = load_model(self.config.model, texts=train_texts.column("text").to_pylist(), seed=self.config.seed)
        state = RunState(sampler=sampler.state, seed=self.config.seed)
        self._emit({"event": "round_start", "round": 0, "clients": [], "model": str(lm.source),
                    "new_head": lm.new_head, "parameters": num_parameters(lm.model)})
        self._evaluate(0, state, lm)
        self._checkpoint(0, state, lm, t0)
        return state, lm

    def _resume(self, sampler: Any) -> tuple[RunState, Any]:
        from fedw2v import runs
        from fedw2v.model import load_model

        latest = runs.latest_checkpoint(self.run_dir)
        state = RunState.from_dict(runs.read_json(latest / runs.STATE))
        sampler.state = state.sampler
        dropped = self.log.truncate_after(state.round)
        lm = load_model(str(latest))
        self.dp.load_state_dict(state.privacy)
        self.dp.record(self.run_dir)
        self.report({"event": "resume", "from_round": state.round, "dropped_events": dropped})
        return state, lm

    def _round(self, r: int, sampler: Any, state: RunState, lm: Any) -> None:
        from fedw2v.fl.aggregate import ClientStats, client_weights, weighted_average
        from fedw2v.weights import load_arrays, trainable_arrays

        t0 = time.perf_counter()
        clients = sampler.sample()
        self.dp.check_budget(r, clients, state.round)
        state.sampler = sampler.state
        self._emit({"event": "round_start", "round": r,
                    **(self.nodes.sampled(clients) if self.nodes is not None else {"clients": clients})})
        self.footprints.before_round(r, lm.model, lm.processor)
        results = self._fit(r, clients, lm)
        if self.nodes is not None:  # keyed by node id: the updates go by the client each node reported
            self.nodes.learn(results)
        ok = {res.get("client_id", cid) if self.nodes is not None else cid: res
              for cid, res in results.items() if res["error"] is None}
        for cid in sorted(results):
            res = results[cid]
            who = self.nodes.who(cid, res) if self.nodes is not None else {"client": cid}
            self._emit({"event": "fit", "round": r, **who, "error": res["error"], **res["metrics"]})
        stored = self.footprints.after_fit(r, {cid: res["arrays"] for cid, res in ok.items()})
        if stored is not None:
            self._emit({"event": "footprints", "round": r, **stored})
        if len(ok) < self.config.required_successes:
            self._round_failed(r, results, state)
        ta = time.perf_counter()
        stats = [ClientStats(cid, int(res["metrics"]["samples"]), res["metrics"].get("loss"),
                             _percent(res["metrics"].get("dev_wer"))) for cid, res in sorted(ok.items())]
        weights = client_weights(stats, self.config.weighting)
        inputs, mix = self.dp.prepare(r, trainable_arrays(lm.model), {cid: res["arrays"] for cid, res in ok.items()},
                                      weights, len(clients))
        averaged = weighted_average(inputs, mix)
        del results, ok, inputs
        privacy = self.dp.release(r, averaged)
        load_arrays(lm.model, averaged)
        del averaged
        self._emit({"event": "aggregate", "round": r, "weighting": self.config.weighting,
                    "weights": {str(c): w for c, w in sorted(weights.items())}, "clients": len(weights),
                    "seconds": time.perf_counter() - ta})
        if privacy is not None:
            self._emit({"event": "privacy", "round": r, **privacy})
        if r % self.config.eval_every == 0 or r == self.config.rounds:
            self._evaluate(r, state, lm)
        self._checkpoint(r, state, lm, t0)

    def _fit(self, r: int, clients: list[int], lm: Any) -> dict[int, dict]:
        """Send every sampled client its job; collect replies as they arrive. {client id: result}."""
        from fedw2v.fl.client_app import TrainJob
        from fedw2v.fl.records import arrays_from_record, record_from_arrays
        from fedw2v.weights import non_finite, trainable_arrays

        on_nodes = self.nodes is not None  # then `clients` are node ids, and a node finds its own data
        arrays = trainable_arrays(lm.model)
        record = record_from_arrays(arrays, packed=on_nodes)  # packed: a few objects for Flower to move, not ~80+
        base = self._base_records(set(arrays)) if self.ships_base else {}
        nodes = self._nodes()
        timeout = self.config.round_timeout or None
        messages = []
        extra = self.nodes.payload(lm) if on_nodes else {}
        for i, cid in enumerate(clients):
            job = TrainJob(-1, r, "", "", "", self._job_train_config, self.config.seed) if on_nodes else TrainJob(
                cid, r, self._job_manifest, self.config.corpus_root, self.base_model, self._job_train_config,
                self.config.seed, self.config.allow_outside_audio)
            messages.append(Message(RecordDict({"arrays": record, "config": self.dp.job_config(job.to_record()),
                                                **base, **extra}),
                                    dst_node_id=cid if on_nodes else nodes[i % len(nodes)],
                                    message_type=MessageType.TRAIN, group_id=str(r), ttl=timeout))
        ids = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        # pushing gives each message its id in place; a message the SuperLink refused has no reply to wait for
        by_id = {m.metadata.message_id: cid for m, cid in zip(messages, clients)}
        pending = ids & set(by_id)
        results: dict[int, dict] = {
            cid: {"error": "the SuperLink did not accept the training message", "metrics": {}, "arrays": None}
            for mid, cid in by_id.items() if mid not in pending
        }
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                msg_id = reply.metadata.reply_to_message_id
                if msg_id not in pending:
                    continue
                pending.discard(msg_id)
                cid = by_id[msg_id]
                results[cid] = self._result(reply, arrays_from_record, non_finite, timeout)
                self.report({"event": "client_done", "round": r, "client": cid, "error": results[cid]["error"],
                             "done": len(results), "of": len(clients)})
            if pending and deadline is not None and time.monotonic() >= deadline:
                # a client that never answers must not block a multi-day run: it fails this round (a late reply
                # is ignored: the next round waits for its own message ids only)
                for msg_id in sorted(pending, key=lambda m: by_id[m]):
                    cid = by_id[msg_id]
                    results[cid] = {"error": f"no reply within {timeout:g} s (--round-timeout)", "metrics": {},
                                    "arrays": None}
                    self.report({"event": "client_done", "round": r, "client": cid, "error": results[cid]["error"],
                                 "done": len(results), "of": len(clients)})
                pending.clear()
            if pending:
                self._check_halt(f"round {r}")
                time.sleep(0.05)
        return results

    def _round_failed(self, r: int, results: dict[int, dict], state: RunState) -> None:
        """Too few clients succeeded: stop the run (its last checkpoint is intact). When the backend is down right
        now, that is why (Ray died under the round: every client failed with an actor error), and that is said."""
        from fedw2v import runs

        ok = sum(1 for res in results.values() if res["error"] is None)
        self._emit({"event": "round_failed", "round": r, "succeeded": ok, "failed": len(results) - ok})
        down = self.halt.backend_down() if self.halt is not None else ""
        if down:
            raise RunFailed(f"{down}; the run stopped at its checkpoint {runs.checkpoint_name(state.round)}",
                            hint="continue it with --resume once Ray runs again")
        first = next((f"client {c}: {res['error']}" for c, res in sorted(results.items()) if res["error"]), "")
        raise RunFailed(
            f"round {r}: {ok} of {len(results)} clients succeeded, {self.config.required_successes} needed "
            f"(--min-fit-clients); the run stopped at checkpoint round {state.round} ({first})",
            hint="fix the failing clients, then continue with --resume",
        )

    def _check_halt(self, where: str) -> None:
        if self.halt is not None and self.halt.is_set():
            raise RunFailed(f"{where}: stopped waiting ({self.halt.reason})")

    def _base_records(self, trainable: set[str]) -> dict[str, Any]:
        """What a worker that cannot read the run directory builds its model from (`client_app.Worker`): the
        round-0 checkpoint's files except its weights, and the weights that are not trained (the frozen feature
        encoder: they never change); the trained ones come with every job anyway. Read once."""
        if self._base is None:
            from flwr.app import ConfigRecord
            from safetensors.numpy import load_file

            from fedw2v.fl.records import record_from_arrays

            base = Path(self.base_model)
            files = {p.name: p.read_bytes() for p in sorted(base.iterdir())
                     if p.is_file() and not p.name.startswith("model.safetensors") and p.name != "state.json"}
            frozen = {k: v for f in sorted(base.glob("*.safetensors")) for k, v in load_file(str(f)).items()
                      if k not in trainable}
            self._base = {"base-files": ConfigRecord(files), "base-arrays": record_from_arrays(frozen)}
        return self._base

    @staticmethod
    def _result(reply: Message, arrays_from_record: Any, non_finite: Any, timeout: float | None = None) -> dict:
        if reply.has_error():
            reason = " ".join(str(reply.error.reason).split())
            if timeout is not None and "TTL" in reason:  # the SuperLink expired it: --round-timeout passed
                return {"error": f"no reply within {timeout:g} s (--round-timeout; the SuperLink expired the "
                                 "message)", "metrics": {}, "arrays": None}
            if "Node Unavailable" in reason:  # Deployment Engine: the SuperNode stopped sending heartbeats
                return {"error": "the SuperNode went away (it missed its heartbeats)", "metrics": {}, "arrays": None}
            return {"error": f"client app crashed: {reason[:300]}", "metrics": {}, "arrays": None}
        content = reply.content
        status = content["status"]
        metrics = {k.replace("-", "_"): v for k, v in dict(content["metrics"]).items()}
        metrics["worker_builds"] = int(status["builds"])
        if status.get("node"):  # the Ray node that ran the client (simulation)
            metrics["ray_node"] = str(status["node"])
        if "threads" in status:
            metrics["worker_threads"] = int(status["threads"])  # torch threads it trained with
        client = {"client_id": int(status["client-id"])}  # the client a SuperNode serves (data on the nodes)
        if status["error"]:
            return {"error": str(status["error"]), "metrics": metrics, "arrays": None, **client}
        arrays = arrays_from_record(content["arrays"])
        bad = non_finite(arrays)
        if bad:
            return {"error": f"non-finite weights received ({', '.join(bad[:3])})", "metrics": metrics, "arrays": None,
                    **client}
        return {"error": None, "metrics": metrics, "arrays": arrays, **client}

    def _nodes(self) -> list[int]:
        deadline = time.monotonic() + 120
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if nodes:
                return nodes
            if time.monotonic() > deadline:
                raise RunFailed("no Flower SuperNode connected within 120 s")
            self._check_halt("waiting for SuperNodes")
            time.sleep(0.2)

    # ---------------------------------------------------------------- evaluation, checkpoints, logging

    def _evaluate(self, r: int, state: RunState, lm: Any) -> None:
        from fedw2v.batching import utterances_from_manifest
        from fedw2v.evaluate import EvaluateConfig, evaluate
        from fedw2v.device import resolve_device
        from fedw2v.train import evaluate_loss

        t0 = time.perf_counter()
        asked = self.nodes.ask_evaluate(r, lm) if self.nodes is not None else None  # their local test splits
        device = resolve_device("auto")
        result = evaluate(self.eval_manifest, lm.model, lm.processor,
                          EvaluateConfig(split=self.config.eval_split, device=device,
                                         corpus_root=self.config.corpus_root or None),
                          progress=lambda done, total: self.report(
                              {"event": "evaluating", "round": r, "done": done, "of": total}))
        utts = utterances_from_manifest(self.eval_manifest, split=self.config.eval_split,
                                        corpus_root=self.config.corpus_root or None)
        loss = evaluate_loss(lm.model, lm.processor, utts, self.train_config, device)
        wer, cer = result.overall.wer, result.overall.cer
        state.history.append({"round": r, "wer": wer, "cer": cer, "loss": loss})
        if state.best_wer is None or wer < state.best_wer:
            state.best_round, state.best_wer = r, wer
        self._emit({"event": "evaluate", "round": r, "split": self.config.eval_split, "wer": wer, "cer": cer,
                    "loss": loss, "utterances": result.overall.utterances, "seconds": time.perf_counter() - t0})
        if asked is not None:
            self.nodes.collect_evaluate(r, asked)

    def _checkpoint(self, r: int, state: RunState, lm: Any, t0: float) -> None:
        from fedw2v import plots, runs
        from fedw2v.model import save_model

        state.round = r
        state.privacy = self.dp.state_dict()
        name = runs.checkpoint_name(r)
        save_model(lm.model, lm.processor, self.run_dir / "checkpoints" / name,
                   extra_json={runs.STATE: state.to_dict()})
        if state.history:
            h = state.history
            plots.wer_per_round([e["round"] for e in h], [e["wer"] for e in h], self.run_dir / "plots" / "wer.png",
                                cer=[e["cer"] for e in h], title=f"{Path(self.config.run_dir).name}: global model, "
                                f"{self.config.eval_split} split")
        self.dp.record(self.run_dir)  # ε in config.json
        # The round's last event is logged before LATEST moves: a crash in between redoes the whole round (its
        # events are dropped on resume); a crash after it leaves a complete round.
        self._emit({"event": "round_end", "round": r, "checkpoint": name, "best_round": state.best_round,
                    "best_wer": state.best_wer, "seconds": time.perf_counter() - t0})
        runs.publish_checkpoint(self.run_dir, name)
        protect = {0, r} | ({state.best_round} if state.best_round is not None else set())
        protect |= self.footprints.rounds_kept()
        runs.prune_checkpoints(self.run_dir, self.config.keep_checkpoints, protect)

    def _emit(self, event: dict) -> None:
        event = {**event, "time": time.time()}
        self.log.append(event)
        self.report(event)


def _percent(value: Any) -> float | None:
    return None if value is None else 100.0 * float(value)


@dataclass
class Outcome:
    """What the server thread leaves for the caller (Flower runs the ServerApp in a thread)."""

    state: RunState | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)  # set when the server thread has ended


def make_server_app(reporter: Reporter | None = None, outcome: Outcome | None = None,
                    halt: Halt | None = None) -> ServerApp:
    """A ServerApp running `Server` with the run config of its context (fedw2v simulate or `flwr run`)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            config = SimulateConfig.from_run_config(dict(context.run_config))
            state = Server(grid, config, reporter, halt).run()
            if outcome is not None:
                outcome.state = state
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller, which reports it in one line
            if outcome is None:
                raise
            outcome.error = exc
        finally:
            if outcome is not None:
                outcome.done.set()

    return app


def log_event(event: dict) -> None:
    """The reporter of a `flwr run` (Deployment Engine, or a SuperLink's simulation): what the operator reads
    in ``flwr run --stream`` — a resume, each round's end with its scores, warnings — through Flower's logger."""
    from logging import INFO, WARNING

    from flwr.common.logger import log

    kind = event.get("event")
    if kind == "resume":
        log(INFO, "fedw2v: resumed from checkpoint round %s (%s events logged after it dropped)",
            event["from_round"], event["dropped_events"])
    elif kind == "round_end":
        best = event.get("best_wer")
        log(INFO, "fedw2v: round %s done, checkpoint %s%s", event["round"], event.get("checkpoint"),
            f"; best WER so far {100 * best:.2f}% (round {event.get('best_round')})" if best is not None else "")
    elif kind == "warning":
        log(WARNING, "fedw2v: %s", event.get("message"))


app = make_server_app(log_event)
