"""Shared test settings: a wide, plain console (tables readable in assertions) and an offline Flower/HF."""

import os

os.environ.setdefault("COLUMNS", "200")
os.environ.setdefault("NO_COLOR", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# --- ASR fixtures (model, train, decode, evaluate, transcribe tests); helpers in tests/asr_fixtures.py ---------

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def asr_corpus(tmp_path_factory):
    """A tiny flite corpus: train = 6 short sentences (voice slt), test = 3 sentences + one > 10 s (voice rms),
    dev = 2 sentences (slt). Returns (manifest, manifest_path)."""
    from fedw2v import manifest
    from tests import asr_fixtures as af

    if not af.have_flite():
        pytest.skip("needs flite")
    root = tmp_path_factory.mktemp("asr_corpus")
    m = af.make_corpus(
        root / "corpus",
        {"Slt_2001A": af.SENTENCES, "Rms_2002B": [*af.TEST_SENTENCES, af.LONG_SENTENCE],
         "Slt_2003C": af.DEV_SENTENCES},
        voice_of={"Rms_2002B": "rms"},
        split_of={"Rms_2002B": "test", "Slt_2003C": "dev"},
    )
    path = manifest.write(m, root / "manifest.parquet")
    return m, path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-init `tiny` model saved as a complete HF directory (base vocabulary)."""
    from fedw2v.model import load_model, save_model

    loaded = load_model("tiny", seed=0)
    return save_model(loaded.model, loaded.processor, tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory, asr_corpus):
    """The `tiny` preset trained on the 6 train sentences until it transcribes them (see test_train's
    learning test for the numbers). Returns (model_dir, TrainMetrics, cer_before, cer_after)."""
    from tests import asr_fixtures as af

    return af.train_tiny(asr_corpus[0], tmp_path_factory.mktemp("trained") / "model")


# --- Federated fixtures (simulate, footprint tests) -------------------------------------------------------------


@pytest.fixture(scope="session")
def fl_clients(tmp_path_factory):
    """A 6-voice synthetic corpus (4 train speakers = 4 clients, 1 dev, 1 test speaker, ~2 min of speech),
    prepared and partitioned (one client per speaker; a 0.2-min holdout for clients above 0.3 min).
    Returns the clients manifest path."""
    import shutil

    from tests.asr_fixtures import synth_clients

    if not (shutil.which("flite") or shutil.which("espeak-ng")):
        pytest.skip("needs flite or espeak-ng")
    return synth_clients(tmp_path_factory.mktemp("fl"), ["--speakers", "6", "--minutes", "2", "--seed", "3"],
                         ["--holdout-minutes", "0.2", "--holdout-min-minutes", "0.3"])
