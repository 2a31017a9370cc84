"""`evaluate --decoder beam`: beam search beside greedy, from one forward pass, and the beam's weights picked on
the dev split.

- The model runs once per batch; the argmax of its logits gives the greedy hypotheses (exactly those of a
  greedy run) and its log-probabilities go through the beam search. Both are scored; the result is the beam
  one, with the greedy one beside it (`EvaluateResult.greedy`).
- Weights: unless ``--lm-weight`` and ``--word-score`` are both given, each weight not given is picked from a
  small grid (`LM_WEIGHT_GRID` x `WORD_SCORE_GRID`, fedw2v.config.decode) by the lowest WER (then CER) on the
  manifest's dev split, decoded once; the grid, its scores and the chosen weights are recorded. When the
  scored split is dev itself, or the manifest has no dev split, the defaults are used and the record says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from fedw2v.config.decode import DEFAULT_LM_WEIGHT, DEFAULT_WORD_SCORE, LM_WEIGHT_GRID, WORD_SCORE_GRID
from fedw2v.evaluate import EvaluateConfig, EvaluateResult, score_hypotheses
from fedw2v.metrics import normalize_pair, total, utterance_counts


def evaluate_beam(manifest: Any, rows: Any, utts: Sequence[Any], decoder: Any, search: Any, config: EvaluateConfig,
                  decode: Any, model_name: str, progress: Callable[[int, int], None] | None = None,
                  say: Callable[[str], None] | None = None) -> EvaluateResult:
    """Score ``utts`` (the rows of ``config.split``) with beam search and greedy (see the module text)."""
    norm = manifest.info.normalization
    search, tuning = pick_weights(manifest, decoder, search, config, decode, say)
    greedy: list[str] = [""] * len(utts)
    beam: list[str] = [""] * len(utts)
    forward = searching = 0.0
    for batch, audios in decoder.utterance_batches(utts, config.max_batch_seconds, config.max_batch_size, progress):
        t0 = time.perf_counter()
        outputs = decoder.frame_outputs(audios)
        t1 = time.perf_counter()
        for i, (ids, logp) in zip(batch, outputs):
            greedy[i] = _greedy_text(decoder, ids)
            beam[i] = search.decode(logp)[0]
        forward, searching = forward + t1 - t0, searching + time.perf_counter() - t1
    audio_s = sum(u.duration for u in utts)
    g_table, g_overall, g_speakers = score_hypotheses(rows, greedy, norm, "greedy")
    b_table, b_overall, b_speakers = score_hypotheses(rows, beam, norm, "beam")
    greedy_result = EvaluateResult(g_table, g_overall, g_speakers, config.split, norm, model_name, forward, audio_s)
    settings = {**search.describe(), "weights": tuning}
    return EvaluateResult(b_table, b_overall, b_speakers, config.split, norm, model_name, forward + searching,
                          audio_s, decoder="beam", greedy=greedy_result, beam=settings)


def _greedy_text(decoder: Any, ids: Any) -> str:
    from fedw2v.decode import text_and_words

    return text_and_words(ids, decoder.vocab, decoder.frame_s)[0]


def grid(search: Any, decode: Any) -> tuple[list[float], list[float]]:
    """The lm weights and word scores to try: a given value alone; the grid for one not given, where it
    matters (no LM: the lm weight does nothing; lexicon-free: there is no word score)."""
    has_lm = search.shared["files"].lm is not None
    lexicon = search.shared["lexicon"] is not None
    weights = [decode.lm_weight] if decode.lm_weight is not None else (
        list(LM_WEIGHT_GRID) if has_lm else [DEFAULT_LM_WEIGHT])
    scores = [decode.word_score] if decode.word_score is not None else (
        list(WORD_SCORE_GRID) if lexicon else [DEFAULT_WORD_SCORE])
    return weights, scores


def pick_weights(manifest: Any, decoder: Any, search: Any, config: EvaluateConfig, decode: Any,
                 say: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """The search with the weights to use, and the record of how they were chosen."""
    import pyarrow.compute as pc

    from fedw2v.batching import utterances_from_manifest

    weights, scores = grid(search, decode)
    record: dict[str, Any] = {"lm_weight": weights[0], "word_score": scores[0]}
    if len(weights) * len(scores) == 1:
        record["chosen_by"] = "given" if decode.lm_weight is not None or decode.word_score is not None else "default"
        return search.with_weights(weights[0], scores[0]), record
    has_dev = bool(pc.any(pc.equal(manifest.table.column("split"), "dev")).as_py())
    if config.split == "dev" or not has_dev:
        why = "the scored split is dev itself" if has_dev else "the manifest has no dev split"
        record.update(lm_weight=weights[0] if decode.lm_weight is not None else DEFAULT_LM_WEIGHT,
                      word_score=scores[0] if decode.word_score is not None else DEFAULT_WORD_SCORE,
                      chosen_by=f"default ({why}, so nothing to tune them on)")
        return search.with_weights(record["lm_weight"], record["word_score"]), record
    dev = utterances_from_manifest(manifest, split="dev", corpus_root=config.corpus_root)
    emissions: list[Any] = [None] * len(dev)
    for batch, audios in decoder.utterance_batches(dev, config.max_batch_seconds, config.max_batch_size):
        for i, (_, logp) in zip(batch, decoder.frame_outputs(audios)):
            emissions[i] = logp
    norm = manifest.info.normalization
    tried = []
    for w in weights:
        for s in scores:
            candidate = search.with_weights(w, s)
            counts = total([utterance_counts(*normalize_pair(u.text, candidate.decode(e)[0], norm))
                            for u, e in zip(dev, emissions)])
            tried.append({"lm_weight": w, "word_score": s, "wer": counts.wer, "cer": counts.cer})
    best = min(tried, key=lambda t: (t["wer"], t["cer"]))
    record.update(lm_weight=best["lm_weight"], word_score=best["word_score"], chosen_by="dev split",
                  dev_utterances=len(dev), grid=tried)
    if say:
        say(f"beam weights: --lm-weight {best['lm_weight']:g} --word-score {best['word_score']:g} (lowest WER of "
            f"{len(tried)} on the dev split, {len(dev)} utterances: {100 * best['wer']:.2f}%)")
    return search.with_weights(best["lm_weight"], best["word_score"]), record
