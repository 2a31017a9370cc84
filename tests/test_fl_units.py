"""Issue 5's small pieces, without Ray: the paper's defaults, client sampling, resources, the live display."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from fedw2v.errors import InputError
from fedw2v.config.simulate import SimulateConfig
from fedw2v.ui.progress import RunDisplay
from fedw2v.fl.sampling import ClientSampler
from fedw2v.fl.simulate import backend_config, plan_resources

# ../shared/REFERENCE.md §1: the paper's federated setup
PAPER = dict(model="facebook/wav2vec2-large-lv60", rounds=100, clients_per_round=20, local_epochs=20, batch_size=4,
             lr_encoder=1e-4, lr_head=1e-3, newbob=True, weighting="num", eval_every=1, eval_split="test",
             precision="fp32", freeze_feature_encoder=False, gpus_per_client=1.0)


def test_defaults_reproduce_the_paper_in_the_config_and_the_cli():
    import typer.main

    from fedw2v.cli import app
    from fedw2v.cli_options import build

    config = SimulateConfig(clients_manifest="c.parquet", run_dir="runs/x")
    assert {k: getattr(config, k) for k in PAPER} == PAPER
    # the command's defaults (None for a local-training option: the recipe's value) build the same config
    params = {p.name: p.default for p in typer.main.get_command(app).commands["simulate"].params}
    assert params["batch_size"] is None and params["newbob"] is None  # unset, not the paper's value written twice
    assert build(SimulateConfig, params, clients_manifest="c.parquet", run_dir="runs/x") == config
    # and config.json can record every resolved value (the run config round-trips)
    assert SimulateConfig.from_run_config(config.to_run_config()) == config


def test_sampling_is_uniform_without_replacement_seeded_and_resumable():
    ids = [7, 3, 11, 5, 9, 1, 13, 2, 8, 4]
    a = ClientSampler(ids, 4, seed=0)
    rounds = [a.sample() for _ in range(2000)]
    assert all(len(r) == 4 == len(set(r)) and r == sorted(r) and set(r) <= set(ids) for r in rounds)
    counts = Counter(c for r in rounds for c in r)
    assert set(counts) == set(ids) and max(counts.values()) / min(counts.values()) < 1.15  # 800 each expected
    b = ClientSampler(ids, 4, seed=0)
    assert [b.sample() for _ in range(5)] == rounds[:5]  # the seed fixes the sequence
    c = ClientSampler(ids, 4, seed=1)
    assert [c.sample() for _ in range(5)] != rounds[:5]
    # the state saved with a checkpoint continues the same sequence in a new sampler
    saved = b.state
    d = ClientSampler(ids, 4, seed=99)
    d.state = saved
    assert [d.sample() for _ in range(5)] == rounds[5:10]
    assert ClientSampler([1, 2], 5, seed=0).sample() == [1, 2]  # more per round than clients: all of them


def test_resources_fractional_gpus_cpu_fallback_and_ray_backend_config():
    half = SimulateConfig(clients_manifest="c", run_dir="r", gpus_per_client=0.5, cpus_per_client=2)
    res = plan_resources(half, cuda_devices=1, cpus=16)
    assert (res.gpus_per_client, res.parallel_clients) == (0.5, 2)  # two clients share the GPU
    cfg = backend_config(res, verbose=False)
    assert cfg["client_resources"] == {"num_cpus": 2, "num_gpus": 0.5}
    assert (cfg["init_args"]["num_cpus"], cfg["init_args"]["num_gpus"]) == (16, 1)
    cpu = plan_resources(half, cuda_devices=0, cpus=2)  # no GPU: clients train on the CPU
    assert (cpu.gpus_per_client, cpu.cpus_per_client, cpu.parallel_clients) == (0.0, 2, 1)
    assert backend_config(cpu, verbose=False)["client_resources"] == {"num_cpus": 2, "num_gpus": 0.0}
    one = plan_resources(SimulateConfig(clients_manifest="c", run_dir="r", cpus_per_client=1), cuda_devices=0, cpus=2)
    assert one.parallel_clients == 2
    with pytest.raises(InputError, match="--gpus-per-client 2.0 but this machine has 1 GPU"):
        plan_resources(SimulateConfig(clients_manifest="c", run_dir="r", gpus_per_client=2.0), cuda_devices=1)


def test_live_display_shows_round_clients_last_wer_elapsed_and_eta():
    from rich.console import Console

    console = Console(record=True, width=200)
    display = RunDisplay(4, console, live=False)
    display({"event": "round_start", "round": 0, "clients": []})
    display({"event": "evaluate", "round": 0, "wer": 0.9})
    display({"event": "round_end", "round": 0, "seconds": 3.0})
    display({"event": "round_start", "round": 1, "clients": [1, 2, 3]})
    display({"event": "client_done", "round": 1, "client": 1, "error": None, "done": 1, "of": 3})
    display({"event": "client_done", "round": 1, "client": 2, "error": "boom", "done": 2, "of": 3})
    line = display.status()
    assert line.startswith("round 1/4 · training · clients 2/3 finished, 1 failed · last WER 90.00% (round 0)")
    assert "elapsed 00:0" in line and line.endswith("ETA --:--")  # no round timed yet
    display({"event": "client_done", "round": 1, "client": 3, "error": None, "done": 3, "of": 3})
    display({"event": "evaluate", "round": 1, "wer": 0.8})
    display({"event": "round_end", "round": 1, "seconds": 60.0})
    assert "ETA 03:00" in display.status()  # 3 rounds left at 60 s each
    display({"event": "round_start", "round": 2, "clients": [1, 2, 3]})
    assert "ETA 03:00" in display.status()  # round 2 under way: it, 3 and 4 are left
    assert "round 1/4 · checkpointed · clients 3/3 finished, 1 failed · last WER 80.00% (round 1)" in (
        console.export_text())  # without a terminal: one line per round


def test_live_display_shows_epsilon_once_a_dp_round_is_released():
    """Issue 13: ε at δ in the live line after every DP round (∞ when metrics.jsonl writes None, z = 0)."""
    from rich.console import Console

    display = RunDisplay(3, Console(record=True, width=200), live=False)
    display({"event": "round_start", "round": 1, "clients": [1, 2]})
    assert "ε" not in display.status()  # no DP round released yet (and none at all with --dp off)
    display({"event": "privacy", "round": 1, "epsilon": 3.2149, "delta": 1e-5})
    assert " · ε 3.21 (δ 1e-05) · elapsed " in display.status()
    display({"event": "privacy", "round": 2, "epsilon": None, "delta": 1e-5})
    assert " · ε ∞ (δ 1e-05) · " in display.status()


def test_simulate_refuses_bf16_on_a_cpu_without_bf16_before_anything_starts(tmp_path, monkeypatch):
    from fedw2v.errors import EnvironmentProblem
    from fedw2v.fl import simulate as sim

    monkeypatch.setattr("fedw2v.device.cpu_bf16_feature", lambda: None)
    monkeypatch.setattr(sim, "plan_resources", lambda config: sim.Resources(0.0, 1.0, 0, 2, 2))  # no GPU here
    config = SimulateConfig(clients_manifest=str(tmp_path / "c.parquet"), run_dir=str(tmp_path / "run"),
                            precision="bf16")
    with pytest.raises(EnvironmentProblem, match="this CPU has no bf16 instructions"):
        sim.simulate(config)
    assert not (tmp_path / "run").exists()  # refused before the run directory or Ray


@pytest.mark.parametrize("clients, per_round, parallel, nodes", [(2000, 10, 2, 2), (20, 10, 2, 2), (2000, 10, 64, 10)])
def test_flower_gets_a_supernode_per_parallel_client_never_one_per_client(tmp_path, monkeypatch, clients, per_round,
                                                                          parallel, nodes):
    """Flower's engine polls its LinkState for every registered SuperNode every 0.1 s (benchmarks/scale_clients.py:
    ~40 ms a pass with 2,000 nodes): the engine gets min(clients per round, parallel clients) of them, whatever the
    number of clients in the manifest; the server addresses clients by id in the message, not by node."""
    import importlib

    from fedw2v.fl import simulate as sim

    flower_sim = importlib.import_module("flwr.simulation.run_simulation")  # the module (its package's attribute of
    # that name is the function)
    seen = {}
    monkeypatch.setattr(flower_sim, "_run_simulation", lambda **kw: seen.update(kw))
    config = SimulateConfig(clients_manifest=str(tmp_path / f"{clients}.parquet"), run_dir=str(tmp_path / "run"),
                            clients_per_round=per_round)
    engine = sim._Engine(config, sim.Resources(0.0, 1.0, 0, parallel, parallel), None, False)
    engine.run()
    assert engine.error is None and seen["num_supernodes"] == nodes
