"""The footprint attack on a federated run (`fedw2v footprint`): which clients' updates give away who spoke.

Per analysed round r, for each sampled client that succeeded and has a holdout, the *test* model is its uploaded
update (its footprint stored by the server, `privacy.online`, or computed here from a saved update) and the
*enrollment* model is global_r (checkpoint ``round-(r-1)``) fine-tuned on its holdout with the run's local
recipe. Their footprints (`privacy.footprints`) are scored as trials and turned into EERs (`privacy.stats`).
`analyse` reads the run directory and writes only the footprints it computes (`privacy.store`), so a rerun
reuses them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedw2v.config.footprint import FootprintConfig
from fedw2v.errors import InputError
from fedw2v.privacy.footprints import ReferenceStates, footprint, model_meta
from fedw2v.privacy.indicator import Indicator, client_speakers, indicator_from_ids, run_indicator
from fedw2v.privacy.stats import LayerEER, Trials, layer_eer, make_trials
from fedw2v.privacy.store import (
    FOOTPRINTS, UPDATES, footprint_path, read_footprints, read_matching, read_update, saved_updates, write_footprints,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from fedw2v.config.simulate import SimulateConfig
    from fedw2v.config.train import TrainConfig
    from fedw2v.manifest import Manifest

ENROLL_SEED_TAG = 0x656E726F  # keeps enrollment seeds apart from the clients' own training seeds

Progress = Callable[[str], None]


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
    defence: str = ""  # the run's --dp, in words ("" without)

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
            "seconds": round(self.seconds, 2), "defence": self.defence,
        }


def report_json(report: FootprintReport) -> str:
    """The report as one JSON document (NaN-free)."""
    from fedw2v.runs import json_safe

    return json.dumps(json_safe(report.to_dict()))


# ------------------------------------------------------------------------------------- the analysis of a run


def analyse(
    run_dir: str | os.PathLike, config: FootprintConfig = FootprintConfig(), progress: Progress | None = None
) -> FootprintReport:
    """The footprint attack on a federated run: EER per layer per analysed round, pooled and averaged.

    Reads the run directory (config.json, metrics.jsonl, checkpoints, footprints/ or updates/, the clients
    manifest); writes only footprints it computes (test footprints from saved updates, enrollment footprints), so
    a rerun reuses them. Every client left out of a round is reported with the reason; a round whose test
    footprints were neither stored nor derivable is an InputError naming it."""
    t_start = time.perf_counter()
    run = _read_run(Path(run_dir), config)
    setting = _setting(run, config, progress or (lambda message: None))
    speakers_of = client_speakers(setting.clients)
    holdout = _holdout_clients(setting.clients)
    results: list[RoundResult] = []
    all_trials: list[Trials] = []
    layers: list[str] = []
    for r in run.rounds:
        result, trials, layers = _analyse_round(setting, r, run.events[r], run.sources[r], holdout, speakers_of)
        results.append(result)
        all_trials.append(trials)
    return _report(setting, results, all_trials, layers, t_start)


@dataclass
class _Run:
    """What the run directory says about the rounds to analyse."""

    path: Path
    sim: SimulateConfig  # the run's config.json
    rounds: list[int]  # rounds to analyse
    events: dict[int, dict[str, Any]]  # `_round_events`
    sources: dict[int, str]  # round -> where its test footprints come from: stored | updates


@dataclass
class _Setting:
    """What every round's analysis shares."""

    run: Path
    sim: SimulateConfig
    config: FootprintConfig
    train_config: TrainConfig  # the enrollment recipe: the run's local one, `enroll_epochs` epochs
    indicator: Indicator
    clients: Manifest  # the run's clients manifest
    say: Progress


def _read_run(run: Path, config: FootprintConfig) -> _Run:
    """The rounds to analyse, each checked: run to the end, test footprints stored or derivable, its global model
    kept. InputError naming the first round that fails a check."""
    from fedw2v.config.simulate import load_run_config

    sim = load_run_config(run)
    rounds = list(config.rounds or sim.footprint_rounds)
    if not rounds:
        raise InputError(
            f"{run}: the run has no footprint rounds and --rounds names none",
            hint="pass --rounds, or rerun `fedw2v simulate` with --footprint-rounds",
        )
    events = _round_events(run)
    done = sorted(r for r, e in events.items() if e["ended"] and r >= 1)
    sources = {r: _round_source(run, r, events, done) for r in rounds}
    return _Run(run, sim, rounds, events, sources)


def _round_source(run: Path, r: int, events: dict[int, dict[str, Any]], done: list[int]) -> str:
    """Where round r's test footprints come from (stored | updates), once the round is known to be analysable."""
    from fedw2v import runs

    if r not in events or not events[r]["ended"]:
        span = f"rounds 1-{done[-1]}" if done else "no round"
        raise InputError(f"{run}: round {r} was not run to the end (the run completed {span})")
    if footprint_path(run, r, "test").is_file():
        source = "stored"
    elif saved_updates(run, r):
        source = "updates"
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
    return source


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


def _setting(run: _Run, config: FootprintConfig, say: Progress) -> _Setting:
    """The clients manifest, the indicator set and the enrollment recipe, read once for all rounds."""
    from fedw2v import manifest as mf

    clients = mf.read(run.sim.clients_manifest, allow_outside_audio=run.sim.allow_outside_audio)
    indicator = _analysis_indicator(run, config, clients)
    say(f"indicator set: {len(indicator.utterances)} utterances ({indicator.seconds:.0f} s) of {indicator.split} "
        f"from {indicator.source}")
    epochs = config.enroll_epochs or run.sim.local_epochs
    train_config = replace(run.sim.train_config(), epochs=epochs, device=config.device)
    return _Setting(run.path, run.sim, config, train_config, indicator, clients, say)


def _holdout_clients(manifest: Manifest) -> set[int]:
    import pyarrow.compute as pc

    t = manifest.table
    rows = t.filter(pc.equal(t.column("local_split"), "holdout"))
    return {int(c) for c in rows.column("client_id").drop_null().unique().to_pylist()}


def _analysis_indicator(run: _Run, config: FootprintConfig, clients_manifest: Manifest) -> Indicator:
    """The indicator set: the one the stored test footprints were computed on, else the run's (or the options')."""
    from fedw2v import manifest as mf

    sim = run.sim
    options = replace(
        sim,
        indicator_manifest=config.indicator_manifest or sim.indicator_manifest,
        indicator_split=config.indicator_split or sim.indicator_split,
        indicator_utterances=config.indicator_utterances or sim.indicator_utterances,
    )
    stored = {}
    for r in run.rounds:
        if run.sources[r] == "stored":
            stored[r] = read_footprints(run.path, r, "test")[1].get("indicator", {})
    if not stored:
        return run_indicator(options, clients_manifest)
    first_round, first = next(iter(stored.items()))
    for r, meta in stored.items():
        if meta.get("utt_ids") != first.get("utt_ids"):
            raise InputError(
                f"{run.path}: the stored test footprints of rounds {first_round} and {r} were computed on different "
                "indicator sets; footprints of different sets cannot be compared",
                hint="analyse those rounds separately with --rounds",
            )
    ids = list(first.get("utt_ids") or [])
    if not ids:
        raise InputError(
            f"{run.path}: the stored test footprints of round {first_round} do not record their indicator set"
        )
    wanted = config.indicator_manifest or config.indicator_split or config.indicator_utterances
    if wanted:
        chosen = run_indicator(options, clients_manifest)
        if chosen.utt_ids != ids:
            raise InputError(
                f"{run.path}: the stored test footprints of round {first_round} were computed on another indicator "
                f"set ({len(ids)} utterances of {first.get('split') or '?'} from {first.get('manifest') or '?'}) "
                "than --indicator/--indicator-split/--indicator-utterances select",
                hint="drop those options, or rerun simulate with --save-updates to analyse with any indicator set",
            )
        return chosen
    path = config.indicator_manifest or sim.indicator_manifest or sim.clients_manifest
    source = (clients_manifest if path == sim.clients_manifest
              else mf.read(path, allow_outside_audio=sim.allow_outside_audio))
    # indicator_from_ids sets available = len(ids): one utterance per id, or an error
    return indicator_from_ids(source, ids, sim.corpus_root or None, split=first.get("split", ""), name=str(path))


def _report(setting: _Setting, results: list[RoundResult], all_trials: list[Trials], layers: list[str],
            t_start: float) -> FootprintReport:
    """The rounds' results with the pooled EER (all rounds' trials) and the average over measurable rounds."""
    import numpy as np

    c = setting.config
    pooled = layer_eer(all_trials, c.bootstrap, c.confidence, c.seed)
    measurable = [r.result.eer for r in results if r.result.measurable]
    average = [float(v) for v in np.mean(np.array(measurable), axis=0)] if measurable else None
    return FootprintReport(str(setting.run), layers, results, pooled, average, setting.indicator.describe(),
                           setting.train_config.epochs, c.bootstrap, c.confidence, time.perf_counter() - t_start,
                           defence(setting.sim))


def defence(sim: SimulateConfig) -> str:
    """What the test models are under the run's --dp (the attack always scores what the server received)."""
    if sim.dp == "local":
        return (f"--dp local (z {sim.dp_noise_multiplier:g}, C {sim.dp_clip:g}): the test models are the noised "
                "updates the server received")
    if sim.dp == "central":
        return (f"--dp central (z {sim.dp_noise_multiplier:g}, C {sim.dp_clip:g}): the test models are the clipped, "
                "un-noised updates the server received (central DP protects the released model, not these)")
    return ""


# ------------------------------------------------------------------------------------------ one round's trials


def _analyse_round(setting: _Setting, r: int, events: dict[str, Any], source: str, holdout: set[int],
                   speakers_of: dict[int, set[str]]) -> tuple[RoundResult, Trials, list[str]]:
    """Round r's trials and EER: the candidates (sampled, succeeded, with a holdout), their test footprints
    (``source``: stored | updates) and enrollment footprints. -> (result, trials, layer names)."""
    candidates, excluded = _candidates(r, events, holdout)
    _check_indicator_speakers(setting, r, candidates, speakers_of)
    base = _GlobalModel(setting, r)
    test, detail = _test_footprints(setting, r, base, candidates, source)
    for c in candidates:
        if c not in test:
            excluded[c] = "no test footprint stored" if source == "stored" else "no saved update"
    candidates = [c for c in candidates if c in test]
    enroll, reused = _enroll_footprints(setting, r, base, candidates, excluded)
    trials = make_trials(enroll, {c: test[c] for c in candidates if c in enroll})
    c = setting.config
    result = layer_eer([trials], c.bootstrap, c.confidence, c.seed)
    return (RoundResult(r, events["clients"], trials.clients, excluded, source, base.name, result, reused, detail),
            trials, base.meta["layers"])


def _candidates(r: int, events: dict[str, Any], holdout: set[int]) -> tuple[list[int], dict[int, str]]:
    """The round's sampled clients that can give a trial, and {client: why not} for the others."""
    excluded: dict[int, str] = {}
    candidates = []
    for c in events["clients"]:
        err = events["errors"].get(c, "no fit result logged")
        if err:
            excluded[c] = f"failed in round {r}"
        elif c not in holdout:
            excluded[c] = "no holdout"
        else:
            candidates.append(c)
    return candidates, excluded


def _check_indicator_speakers(setting: _Setting, r: int, candidates: list[int],
                              speakers_of: dict[int, set[str]]) -> None:
    analysed = set().union(*(speakers_of.get(c, set()) for c in candidates))
    overlap = sorted(set(setting.indicator.speakers) & analysed)
    if overlap:
        raise InputError(
            f"{setting.run}: the indicator set shares speakers with clients analysed in round {r} "
            f"({', '.join(overlap[:5])}); their own speech would be scored",
            hint="name an indicator set of other speakers with --indicator / --indicator-split",
        )


class _GlobalModel:
    """The global model round r's clients started from (checkpoint ``round-(r-1)``) on the analysis device. Test
    and enrollment models are made from it in place, so `restore` resets its weights; its hidden states on the
    indicator set (`reference`) are computed on first need only (not at all when every footprint is stored)."""

    def __init__(self, setting: _Setting, r: int):
        from fedw2v import runs
        from fedw2v.device import resolve_device
        from fedw2v.model import load_model

        self.device = resolve_device(setting.config.device)
        self.name = runs.checkpoint_name(r - 1)
        self.round = r
        self.indicator = setting.indicator
        self.say = setting.say
        self.say(f"round {r}: loading the global model {self.name}")
        lm = load_model(str(setting.run / "checkpoints" / self.name))
        self.model, self.processor = lm.model, lm.processor
        self.model.to(self.device)
        self.meta = model_meta(self.model, self.indicator)  # what its footprints record (`footprint_meta`)
        self._weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._reference: ReferenceStates | None = None

    def restore(self) -> None:
        self.model.load_state_dict(self._weights)

    def reference(self) -> ReferenceStates:
        if self._reference is None:
            self.restore()
            self.say(f"round {self.round}: hidden states of {self.name} on {len(self.indicator.utterances)} "
                     "indicator utterances")
            self._reference = ReferenceStates.compute(self.model, self.processor, self.indicator, self.device)
        return self._reference

    def footprint(self, reference: ReferenceStates) -> np.ndarray:
        """The footprint of the model as it is now (a test or enrollment model made in place)."""
        return footprint(self.model, self.processor, reference, self.device)


def _test_footprints(setting: _Setting, r: int, base: _GlobalModel, candidates: list[int],
                     source: str) -> tuple[dict[int, np.ndarray], str]:
    """({client: test footprint}, where they came from): stored (by the server, or by an earlier analysis),
    else computed from the candidates' saved updates (and stored for the next analysis)."""
    from fedw2v.weights import load_arrays

    if source == "stored":
        test, meta = read_footprints(setting.run, r, "test")
        layers = base.meta["layers"]
        if meta.get("layers") and meta["layers"] != layers:
            raise InputError(
                f"{footprint_path(setting.run, r, 'test')}: footprints of another model ({len(meta['layers'])} "
                f"layers; {base.name} has {len(layers)})"
            )
        return test, ("stored, computed from saved updates by an earlier analysis" if meta.get("source") == "updates"
                      else "stored by the server during the run")
    test = {}
    have = set(saved_updates(setting.run, r))
    for i, c in enumerate([c for c in candidates if c in have], start=1):
        reference = base.reference()
        setting.say(f"round {r}: test footprint of client {c} from its saved update ({i})")
        base.restore()
        load_arrays(base.model, read_update(setting.run, r, c))
        test[c] = base.footprint(reference)
    if test:
        write_footprints(setting.run, r, "test", test, {**base.meta, "source": "updates"})
    return test, "computed from saved updates"


def _enroll_footprints(setting: _Setting, r: int, base: _GlobalModel, candidates: list[int],
                       excluded: dict[int, str]) -> tuple[dict[int, np.ndarray], int]:
    """({client: enrollment footprint}, how many were reused): the global model fine-tuned on each candidate's
    holdout; those an earlier analysis stored with the same settings are reused (`FootprintConfig.reuse`), new
    ones stored. A candidate whose training took no step goes to ``excluded``."""
    tc = setting.train_config
    train = {k: v for k, v in tc.to_dict().items() if k not in ("seed", "device", "num_workers")}
    meta = {**base.meta, "enroll": {"epochs": tc.epochs, "train": train, "base_checkpoint": base.name,
                                    "seed_rule": "enroll_seed(run seed, round, client)"}}
    enroll: dict[int, np.ndarray] = {}
    if setting.config.reuse:
        stored = read_matching(setting.run, r, "enroll", meta)
        enroll = {c: v for c, v in stored.items() if c in candidates}
    reused = len(enroll)
    fresh = {}
    for i, c in enumerate([c for c in candidates if c not in enroll], start=1):
        reference = base.reference()
        setting.say(f"round {r}: enrollment model of client {c}: {base.name} fine-tuned on its holdout ({i})")
        if not _enroll(setting, r, c, base):
            excluded[c] = "enrollment training took no step (holdout outside the duration filter)"
            continue
        fresh[c] = base.footprint(reference)
    if fresh:
        write_footprints(setting.run, r, "enroll", fresh, meta)
    enroll.update(fresh)
    return enroll, reused


def enroll_seed(seed: int, round_: int, client_id: int) -> int:
    """The enrollment training seed: derived like the clients' (run seed, round, client), in a separate stream,
    so an enrollment model never shares dropout masks or batch order with the update it is compared with."""
    import numpy as np

    return int(np.random.SeedSequence([seed, round_, client_id, ENROLL_SEED_TAG]).generate_state(1)[0])


def _enroll(setting: _Setting, r: int, client: int, base: _GlobalModel) -> bool:
    """Make ``base`` the client's enrollment model: the global model fine-tuned on its holdout with the run's local
    recipe (its local dev split, if any, for the recipe's dev checks), seeded by `enroll_seed`. False when the
    training took no step."""
    from fedw2v.batching import utterances_from_manifest
    from fedw2v.train import local_train

    root = setting.sim.corpus_root or None
    hold = utterances_from_manifest(setting.clients, split="train", local_split="holdout", client_id=client,
                                    corpus_root=root)
    dev = utterances_from_manifest(setting.clients, split="train", local_split="dev", client_id=client,
                                   corpus_root=root)
    base.restore()
    seeded = replace(setting.train_config, seed=enroll_seed(setting.sim.seed, r, client))
    return local_train(base.model, base.processor, hold, seeded, dev=dev or None).steps > 0


__all__ = ["FootprintConfig", "FootprintReport", "RoundResult", "analyse", "enroll_seed", "report_json"]
