"""The demo's claim, at test scale: federated fine-tuning of the packaged `tiny-pretrained` model on voices it
never heard lowers the global model's WER and CER on held-out speakers, round after round, with the Makefile's demo
voices and training settings (`make demo` shows the full-size run).

The rounds run in this process: the real `Server` on test_server's `FakeGrid`, a stand-in for Flower's grid that
hands each training message to the real ClientApp handler (`run_train`). Flower's Ray-backed engine itself is
tested in test_simulate.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedw2v.config.simulate import SimulateConfig
from fedw2v.fl.server_app import Server
from tests.test_server import FakeGrid

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def _makefile_value(name: str) -> str:
    """A variable of the Makefile (continuation lines joined)."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.split("=")[0].rstrip().rstrip("?").strip() == name)
    return line.split("=", 1)[1].strip()


def _demo_option(flags: str, name: str) -> str:
    words = flags.split()
    return words[words.index(name) + 1]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_federated_fine_tuning_of_tiny_pretrained_lowers_wer_and_cer_on_unheard_voices(tmp_path):
    from tests.asr_fixtures import synth_clients

    voices = _makefile_value("DEMO_VOICES")
    flags = _makefile_value("DEMO_FL")
    assert _makefile_value("DEMO_MODEL") == "tiny-pretrained" and "$(DEMO_MODEL)" in flags
    # the demo's voices, half its length: 6 clients, dev and test speakers the model never heard
    clients = synth_clients(tmp_path, ["--voices", voices, "--minutes", "8", "--seed", "0"])
    lr = float(_demo_option(flags, "--lr-encoder"))
    config = SimulateConfig(
        clients_manifest=str(clients), run_dir=str(tmp_path / "run"), model="tiny-pretrained",
        rounds=2, clients_per_round=3, local_epochs=int(_demo_option(flags, "--local-epochs")),
        batch_size=int(_demo_option(flags, "--batch-size")), recipe=_demo_option(flags, "--recipe"),
        lr_encoder=lr, lr_head=float(_demo_option(flags, "--lr-head")), newbob=False, gpus_per_client=0,
        cpus_per_client=1, seed=0)
    history = Server(FakeGrid(), config).run().history
    wer = [h["wer"] for h in history]
    cer = [h["cer"] for h in history]
    assert [h["round"] for h in history] == [0, 1, 2]
    assert 0.2 < cer[0] < 0.75, cer  # the pretrained start reads unheard voices, badly (1.0 = all blank)
    assert cer[2] < cer[1] < cer[0] and wer[2] < wer[0], (wer, cer)
    assert cer[0] - cer[2] > 0.02, cer  # by more than noise
