"""fedw2v.decode: greedy CTC text and word times, padded batches, and chunk stitching of long audio."""

from __future__ import annotations

import numpy as np
import pytest

from fedw2v.decode import Decoder, GreedyStream, Vocab, chunk_plan, ctc_runs, stitch, text_and_words
from fedw2v.model import load_model
from fedw2v.text import character_vocabulary

VOCAB = character_vocabulary()
V = Vocab(tuple(VOCAB), blank=0, delimiter=2)
HOP, RF = 320, 400  # wav2vec2 base: 20 ms hop, 25 ms receptive field


def ids_of(frames: str) -> np.ndarray:
    """'_' is blank, ' ' the word delimiter, letters themselves: one character per frame."""
    return np.array([0 if c == "_" else VOCAB.index("|" if c == " " else c) for c in frames])


def test_ctc_collapse_repeats_blanks_and_delimiters():
    ids = ids_of("__hh_e_ll_ll_oo__  _ww_oorrl_d__")
    text, words = text_and_words(ids, V, 0.02)
    assert text == "hello world"
    assert [w.word for w in words] == ["hello", "world"]
    assert words[0].start == pytest.approx(2 * 0.02) and words[0].end == pytest.approx(15 * 0.02)
    assert words[1].start == pytest.approx(20 * 0.02) and words[1].end == pytest.approx(30 * 0.02)
    assert ctc_runs(ids_of("aa_a"), 0)[0] == (VOCAB.index("a"), 0, 2)
    assert text_and_words(ids_of("____"), V, 0.02) == ("", [])
    assert text_and_words(ids_of("  a  b  "), V, 0.02)[0] == "a b"


def test_text_matches_tokenizer_decode():
    """Our greedy text is the tokenizer's (what the HF pipeline prints), runs of spaces collapsed."""
    tok = load_model("tiny").processor.tokenizer
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.choice(len(VOCAB), size=int(rng.integers(0, 60)), p=_peaky(len(VOCAB)))
        assert text_and_words(ids, V, 0.02)[0] == " ".join(tok.decode(ids.tolist()).split())


def test_greedy_stream_in_pieces_equals_the_whole():
    """Frame ids fed in arbitrary pieces give the text and word times of the whole sequence: a run of one id
    (a character, a blank, a delimiter) across a border is one run, never a doubled character or a split word."""
    rng = np.random.default_rng(5)
    for _ in range(200):
        ids = rng.choice(len(VOCAB), size=int(rng.integers(0, 80)), p=_peaky(len(VOCAB)))
        ids = np.repeat(ids, rng.integers(1, 4, size=len(ids)))  # runs longer than one frame, as from a model
        whole = text_and_words(ids, V, 0.02)
        cuts = np.sort(rng.choice(len(ids) + 1, size=int(rng.integers(0, 8))))
        stream = GreedyStream(V, 0.02)
        for piece in np.split(ids, cuts):
            stream.feed(piece)
        assert stream.finish() == whole
    stream = GreedyStream(V, 0.02)
    for piece in (ids_of("_hh"), ids_of("h"), ids_of("hh_"), ids_of(" "), ids_of("ii")):
        stream.feed(piece)
    text, words = stream.finish()
    assert text == "h i" and (words[0].start, words[0].end) == (0.02, 0.12)


def test_greedy_stream_keeps_no_frames():
    """The stream holds only the characters of the word being read: no frame array, whatever its length."""
    stream = GreedyStream(V, 0.02)
    piece = np.zeros(100_000, dtype=np.int64)
    for _ in range(5):
        stream.feed(piece)
    assert stream.frames == 500_000 and stream.chars == [] and stream.words == []
    assert all(not isinstance(v, np.ndarray) for v in vars(stream).values())
    assert stream.finish() == ("", [])


def _peaky(n):
    p = np.ones(n)
    p[0], p[2] = n, n / 4  # many blanks, some delimiters, like real CTC output
    return p / p.sum()


# --- chunk stitching ----------------------------------------------------------------------------------------


def _frames_audio(ids: np.ndarray, extra: int = RF - HOP) -> np.ndarray:
    """Audio whose 320-sample block j holds the value ids[j] (plus a tail so every frame is complete)."""
    return np.concatenate([np.repeat(ids.astype(np.float32), HOP), np.zeros(extra, np.float32)])


def _local_forward(chunks):
    """A 'model' whose frame j is the value at the centre of its receptive field (like a conv encoder)."""
    out = []
    for c in chunks:
        n = max(0, (len(c) - RF) // HOP + 1)
        out.append(np.rint(c[np.arange(n) * HOP + RF // 2]).astype(np.int64))
    return out


def _speech_like_ids(rng, words=120):
    frames = []
    for _ in range(words):
        for ch in rng.choice(list("abcdefghij"), size=int(rng.integers(1, 8))):
            frames += [VOCAB.index(ch)] * int(rng.integers(1, 4)) + [0] * int(rng.integers(0, 3))
        frames += [2] * int(rng.integers(1, 3)) + [0] * int(rng.integers(0, 5))
    return np.array(frames)


@pytest.mark.parametrize("chunk_s,overlap_s", [(1.0, 0.1), (2.0, 0.5), (3.3, 1.0), (5.0, 0.02), (0.5, 0.2)])
def test_stitching_loses_and_doubles_nothing(chunk_s, overlap_s):
    rng = np.random.default_rng(int(chunk_s * 100))
    ids = _speech_like_ids(rng)
    audio = _frames_audio(ids)
    whole = _local_forward([audio])[0]
    stitched, n = stitch(_local_forward, audio, HOP, chunk_s, overlap_s)
    assert n > 3
    np.testing.assert_array_equal(stitched, whole)  # every frame exactly once, from its owning chunk
    text, words = text_and_words(stitched, V, 0.02)
    assert text == text_and_words(ids, V, 0.02)[0] and len(words) == 120


def test_chunk_plan_tiles_the_file():
    for n in (1, 1000, 16000 * 30, 16000 * 30 + 1, 16000 * 95 + 123):
        plan = chunk_plan(n, HOP, 30.0, 1.0)
        assert plan[0][2] == 0 and plan[-1][3] == n
        for (s, e, o0, o1), nxt in zip(plan, plan[1:] + [None]):
            assert s % HOP == 0 and s <= o0 < o1 <= e and e - s <= 30 * 16000
            if nxt:
                assert o1 == nxt[2] and o1 - s >= 16000 and nxt[1] - o1 >= 16000  # 1 s of context both sides
    with pytest.raises(ValueError, match="too short"):
        chunk_plan(16000 * 10, HOP, 2.0, 1.0)


# --- the real model path --------------------------------------------------------------------------------------


def test_padded_batch_equals_one_by_one():
    loaded = load_model("tiny", seed=3)
    dec = Decoder(loaded.model, loaded.processor, "cpu")
    rng = np.random.default_rng(1)
    audios = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 23456, 8000)]
    batched = dec.frame_ids(audios)
    for a, ids in zip(audios, batched):
        assert len(ids) == loaded.model._get_feat_extract_output_lengths(len(a))
        np.testing.assert_array_equal(ids, dec.frame_ids([a])[0])


def test_transcribe_short_audio_is_one_pass_with_word_times():
    loaded = load_model("tiny", seed=3)
    dec = Decoder(loaded.model, loaded.processor, "cpu")
    audio = np.random.default_rng(2).standard_normal(16000 * 3).astype(np.float32) * 0.1
    t = dec.transcribe(audio, chunk_s=30.0)
    assert t.chunks == 1 and t.duration == pytest.approx(3.0)
    assert t.text == " ".join(w.word for w in t.words)
    assert all(0 <= w.start < w.end <= 3.0 for w in t.words)
    assert all(a.end <= b.start for a, b in zip(t.words, t.words[1:]))


def test_chunked_hf_model_matches_single_pass():
    """A real Wav2Vec2ForCTC through the real decoding path, with a context the overlap can cover: no transformer
    layer (so each frame sees the conv receptive field and the +-1.28 s positional convolution only) and no
    per-chunk normalisation. Decoded in chunks with 1.5 s of context on each side it gives exactly the frames
    of one pass over the whole file, so the same words; with 0.1 s of context it does not (the test can fail)."""
    import torch
    from transformers import Wav2Vec2ForCTC

    from fedw2v.model import build_processor, tiny_config, with_ctc_head

    cfg = with_ctc_head(tiny_config(num_hidden_layers=0), len(VOCAB))
    torch.manual_seed(0)
    proc = build_processor(VOCAB, cfg)
    proc.feature_extractor.do_normalize = False
    dec = Decoder(Wav2Vec2ForCTC(cfg), proc, "cpu")
    rng = np.random.default_rng(0)
    for n in (16000 * 20 + 123, 16000 * 13):
        audio = (rng.standard_normal(n) * 0.1).astype(np.float32)
        whole = dec.frame_ids([audio])[0]
        for chunk_s in (4.0, 5.0, 7.3):
            ids, chunks = stitch(dec.frame_ids, audio, dec.hop, chunk_s, 1.5)
            assert chunks >= 2 and len(ids) == len(whole)
            np.testing.assert_array_equal(ids, whole)
        assert dec.transcribe(audio, 5.0, 1.5).text == dec.transcribe(audio, 60.0).text
        short_ctx, _ = stitch(dec.frame_ids, audio, dec.hop, 4.0, 0.1)
        assert len(short_ctx) == len(whole) and (short_ctx != whole).any()


def test_long_file_decodes_one_chunk_per_pass_on_cpu_and_drops_each_output():
    """On a CPU each forward pass decodes one chunk, and no pass's frame ids outlive it: once a later pass
    runs, the earlier outputs are gone (kept for the whole file, they fragment the heap the passes allocate
    their activations from, and a long file's peak memory grows with its length)."""
    import gc
    import weakref

    loaded = load_model("tiny", seed=3)
    dec = Decoder(loaded.model, loaded.processor, "cpu")
    outputs, batch_sizes, alive = [], [], []
    forward = dec.frame_ids

    def frame_ids(audios):
        gc.collect()
        alive.append(sum(ref() is not None for ref in outputs))
        batch_sizes.append(len(audios))
        result = forward(audios)
        outputs.extend(weakref.ref(ids.base if ids.base is not None else ids) for ids in result)
        return result

    dec.frame_ids = frame_ids
    audio = np.random.default_rng(2).standard_normal(16000 * 40).astype(np.float32) * 0.1
    t = dec.transcribe(audio, chunk_s=4.0, overlap_s=0.5)
    assert t.chunks == len(batch_sizes) >= 12 and set(batch_sizes) == {1}
    assert max(alive) <= 1, alive


def test_audio_shorter_than_one_frame_is_padded_not_fatal():
    loaded = load_model("tiny", seed=3)
    dec = Decoder(loaded.model, loaded.processor, "cpu")
    assert dec.min_samples == 825  # tiny: kernels (10, 8, 4, 4, 4), strides (5, 4, 4, 2, 2)
    t = dec.transcribe(np.full(100, 0.01, np.float32))
    assert t.chunks == 1 and isinstance(t.text, str)
    assert [len(ids) for ids in dec.frame_ids([np.zeros(10, np.float32), np.zeros(3200, np.float32)])] == [1, 8]
