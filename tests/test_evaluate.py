"""fedw2v.metrics and `fedw2v evaluate`: known WERs, identical normalisation, the whole split, Parquet, JSON."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fedw2v.cli import app
from fedw2v.evaluate import score_file, split_rows
from fedw2v.metrics import ErrorCounts, by_group, normalize_pair, score, utterance_counts

runner = CliRunner()


def test_known_edits_give_known_rates():
    c = utterance_counts("the cat sat on the mat", "the bat sat on mat")  # 1 substitution, 1 deletion
    assert (c.substitutions, c.deletions, c.insertions, c.ref_words) == (1, 1, 0, 6)
    assert c.wer == pytest.approx(2 / 6)
    assert c.cer == pytest.approx(5 / 22)  # c->b, and "the " deleted (4 characters)
    assert utterance_counts("a b", "a b c").insertions == 1
    assert score(["a b c d", "e f"], ["a b c d", "e f"]).wer == 0.0
    total = score(["a b c d", "e f"], ["a x c d", "e f g"])
    assert total.word_errors == 2 and total.ref_words == 6 and total.wer == pytest.approx(2 / 6)
    assert utterance_counts("", "") == ErrorCounts(utterances=1)
    assert utterance_counts("", "x").insertions == 1  # an empty reference: every word is an insertion


def test_rates_are_summed_edits_over_summed_words_and_grouped():
    counts = [utterance_counts("a b c d", "a b c d"), utterance_counts("e f", "x f"), utterance_counts("g", "")]
    groups = by_group(["s2", "s1", "s1"], counts)
    assert list(groups) == ["s1", "s2"]
    assert groups["s1"].wer == pytest.approx(2 / 3) and groups["s2"].wer == 0.0
    assert sum(counts, ErrorCounts()).wer == pytest.approx(2 / 7)  # not the mean of per-utterance rates


def test_normalisation_is_applied_identically():
    ref, hyp = normalize_pair("it 's <unk> fine {NOISE} today(2)", "IT 's fine today", "paper")
    assert ref == hyp == "it 's fine today"
    ref, hyp = normalize_pair("it 's fine", "it's fine", "joined")
    assert ref == hyp == "it's fine"


def _hyps_file(path, rows, hyps):
    pq.write_table(pa.table({"utt_id": rows.column("utt_id"), "hypothesis": pa.array(hyps, pa.string())}), path)
    return path


def test_hypothesis_files_perfect_and_known_edits(tmp_path, asr_corpus):
    m, _ = asr_corpus
    rows = split_rows(m, "test")
    refs = rows.column("text").to_pylist()
    perfect = score_file(m, _hyps_file(tmp_path / "p.parquet", rows, refs), "test")
    assert perfect.overall.wer == 0.0 and perfect.overall.cer == 0.0 and perfect.overall.utterances == 4
    # Known edits: one substitution in the first utterance, one deleted word in the second, the third
    # upper-cased (normalised away), the fourth (> 10 s) missing from the file (all words deleted).
    edited = list(refs)
    w = edited[0].split()
    edited[0] = " ".join(["zzz", *w[1:]])
    edited[1] = " ".join(edited[1].split()[1:])
    edited[2] = edited[2].upper()
    words = sum(len(r.split()) for r in refs)
    hyp_path = _hyps_file(tmp_path / "e.parquet", rows.slice(0, 3), edited[:3])
    res = score_file(m, hyp_path, "test")
    long_words = len(refs[3].split())
    assert res.overall.word_errors == 2 + long_words and res.overall.ref_words == words
    assert res.overall.wer == pytest.approx((2 + long_words) / words)
    assert res.by_speaker["Rms"].wer == res.overall.wer


def _model_that_always_says(model_dir, tmp_path, token: str):
    """A copy of ``model_dir`` whose CTC head outputs ``token`` at every frame: greedy decoding gives exactly
    ``token`` for any audio, so the errors can be counted without the model."""
    import torch

    from fedw2v.model import load_model, save_model

    loaded = load_model(str(model_dir))
    head = loaded.model.lm_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-10.0)
        head.bias[loaded.processor.tokenizer.convert_tokens_to_ids(token)] = 10.0
    return save_model(loaded.model, loaded.processor, tmp_path / f"says-{token}")


def test_cli_evaluate_scores_the_whole_split(tmp_path, tiny_model_dir, asr_corpus):
    """Every test utterance is decoded (the one over 10 s too) and the scores equal jiwer's on the raw strings:
    summed edits over summed reference lengths, not fedw2v's own arithmetic scoring its own output."""
    import jiwer

    m, path = asr_corpus
    model = _model_that_always_says(tiny_model_dir, tmp_path, "a")
    rows = split_rows(m, "test")
    refs = rows.column("text").to_pylist()  # the manifest's normalised references
    assert len(refs) == 4 and max(rows.column("duration").to_pylist()) > 10
    out = tmp_path / "hyps.parquet"
    res = runner.invoke(app, ["evaluate", str(model), "--manifest", str(path), "--json", "--by", "speaker",
                              "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)  # JSON only on stdout
    assert data["utterances"] == 4 and data["split"] == "test" and data["normalization"] == "paper"
    table = pq.read_table(out)
    assert table.column("utt_id").to_pylist() == rows.column("utt_id").to_pylist()  # all of them, no length filter
    assert table.column("hypothesis").to_pylist() == ["a"] * 4
    assert data["wer"] == pytest.approx(jiwer.wer(refs, ["a"] * 4))
    assert data["cer"] == pytest.approx(jiwer.cer(refs, ["a"] * 4))
    # and by hand: one hypothesis word against n reference words is n - 1 deletions, plus a substitution
    # unless the reference has the word "a"
    words = sum(len(r.split()) for r in refs)
    errors = sum(len(r.split()) - ("a" in r.split()) for r in refs)
    assert data["ref_words"] == words and data["word_errors"] == errors and data["wer"] == pytest.approx(errors / words)
    assert set(data["by_speaker"]) == {"Rms"} and data["by_speaker"]["Rms"]["wer"] == pytest.approx(errors / words)
    meta = json.loads(table.schema.metadata[b"fedw2v_hypotheses"])
    assert meta["split"] == "test" and meta["normalization"] == "paper"


def test_cli_evaluate_tables_and_errors(tiny_model_dir, asr_corpus):
    _, path = asr_corpus
    res = runner.invoke(app, ["evaluate", str(tiny_model_dir), "--manifest", str(path), "--split", "dev",
                              "--by", "speaker"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "fedw2v evaluate (dev, normalisation paper)" in res.stdout and "per speaker (dev)" in res.stdout
    assert "Slt" in res.stdout
    res = runner.invoke(app, ["evaluate", "tiny", "--manifest", str(path), "--split", "eval"])
    assert res.exit_code == 2 and "split must be one of" in res.output
    res = runner.invoke(app, ["evaluate", "tiny", "--manifest", str(path), "--by", "gender"])
    assert res.exit_code == 2 and "--by must be speaker" in res.output


@pytest.mark.slow
def test_evaluate_trained_model_end_to_end(trained_tiny, asr_corpus):
    """`fedw2v evaluate` of the model the learning test trained, on its training split, agrees with the
    learning test's own greedy CER (same decoding, batched by length instead of one utterance list)."""
    model_dir, _, _, cer_after = trained_tiny
    res = runner.invoke(app, ["evaluate", str(model_dir), "--manifest", str(asr_corpus[1]), "--split", "train",
                              "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["utterances"] == 6 and data["cer"] == pytest.approx(cer_after, abs=0.02)
    assert data["wer"] <= 0.5
