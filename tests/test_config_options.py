"""One declaration per option: the CLI, the Flower run config, the README and pyproject all come from it, and
the recipes are resolved in one place (the config layer), the same for `train` and `simulate`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from fedw2v.cli import app
from fedw2v.config import docs
from fedw2v.config import options as opts
from fedw2v.config.decode import DecodeConfig
from fedw2v.config.simulate import SimulateConfig
from fedw2v.config.train import TrainConfig, TrainRunConfig, recipe
from fedw2v.evaluate import EvaluateConfig
from fedw2v.lm.build import LmBuildConfig
from fedw2v.transcribe import TranscribeConfig

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# options a command has besides its declared ones: display and output switches
DISPLAY = {"simulate": {"verbose"}, "train": {"json_out"},
           "evaluate": {"manifest_path", "by", "out", "allow_pickle", "json_out", "participation", "rounds", "plot"},
           "transcribe": {"model", "out", "allow_pickle"}, "lm build": {"out"}}


def _command(name: str):
    command = typer.main.get_command(app)
    for part in name.split():
        command = command.commands[part]
    return command


@pytest.mark.parametrize("command, classes", [("simulate", (SimulateConfig,)),
                                              ("train", (TrainRunConfig, TrainConfig)),
                                              ("evaluate", (EvaluateConfig, DecodeConfig)),
                                              ("transcribe", (TranscribeConfig, DecodeConfig)),
                                              ("lm build", (LmBuildConfig,))])
def test_the_commands_options_are_exactly_the_declared_ones(command, classes):
    params = {p.name: p for p in _command(command).params if isinstance(p, typer.core.click.Option)}
    declared = {f.name: (f, opt) for cls in classes for f, opt, _ in opts.options(cls) if opt.cli}
    assert set(params) - set(declared) == DISPLAY[command]
    for name, (f, opt) in declared.items():
        p = params[name]
        assert p.opts[0] == opts.flags(f, opt)[0], name
        assert opt.help in (p.help or ""), name
        if opt.negative:
            assert p.secondary_opts == [opt.negative], name
        if opts.recipe_field(f, opt):
            assert p.default is None, f"{name}: unset must mean the recipe's value"
        elif opts.default_of(f) is not dataclasses.MISSING and not opt.path and not opt.rounds:
            assert p.default == opts.default_of(f), name


def test_readme_and_pyproject_are_generated_from_the_declarations():
    assert docs.update(ROOT, write=False) == [], "run: python -m fedw2v.config.docs"


def test_a_stale_block_is_found(tmp_path):
    for name in ("README.md", "pyproject.toml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("| `--rounds` | 100 |", "| `--rounds` | 50 |"))
    toml = tmp_path / "pyproject.toml"
    toml.write_text(toml.read_text().replace("keep-checkpoints = 3\n", ""))  # a missing key
    assert docs.update(tmp_path, write=False) == ["README.md:simulate-options", "pyproject.toml:flwr-run-config"]
    assert docs.update(tmp_path, write=True) and docs.update(tmp_path, write=False) == []


def test_pyproject_run_config_builds_the_default_config():
    import tomllib

    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config = SimulateConfig.from_run_config(table)
    assert config == dataclasses.replace(SimulateConfig(clients_manifest="x", run_dir="y"),
                                         clients_manifest=table["clients-manifest"], run_dir=table["run-dir"])
    assert set(table) == {f.name.replace("_", "-") for f, opt, _ in opts.options(SimulateConfig) if opt.run_config}


def _captured(monkeypatch, tmp_path):
    """Run `simulate` and `train` without running them: their stage functions record the config."""
    import fedw2v.fl.simulate
    import fedw2v.train_run

    seen = {}

    class Stop(Exception):
        pass

    def fake_simulate(config, **kwargs):
        seen["simulate"] = config
        raise Stop

    def fake_train(config, **kwargs):
        seen["train"] = config
        raise Stop

    monkeypatch.setattr(fedw2v.fl.simulate, "simulate", fake_simulate)
    monkeypatch.setattr(fedw2v.train_run, "run", fake_train)
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    return seen, manifest


@pytest.mark.parametrize("flags", [[], ["--batch-size", "8", "--lr-encoder", "1e-3"], ["--newbob"],
                                   ["--no-newbob", "--lr-head", "5e-4", "--freeze-feature-encoder"],
                                   ["--no-gemm-feature-encoder"], ["--no-keep-freed-memory"],
                                   ["--no-fast-pos-conv", "--no-fused-optimizer"]])
def test_simulate_and_train_with_the_tiny_recipe_train_alike(monkeypatch, tmp_path, flags):
    seen, manifest = _captured(monkeypatch, tmp_path)
    runner.invoke(app, ["simulate", str(manifest), "--run-dir", str(tmp_path / "run"), "--recipe", "tiny",
                        "--local-epochs", "3", *flags])
    runner.invoke(app, ["train", str(manifest), "--out", str(tmp_path / "out"), "--recipe", "tiny",
                        "--epochs", "3", *flags])
    local = seen["simulate"].train_config()
    central = seen["train"].train
    assert local == central  # NewBob included: simulate --recipe tiny used to anneal, train --recipe tiny not
    assert local.newbob is ("--newbob" in flags)
    assert local.gemm_feature_encoder is ("--no-gemm-feature-encoder" not in flags)
    assert local.keep_freed_memory is ("--no-keep-freed-memory" not in flags)
    assert local.fast_pos_conv is local.fused_optimizer is ("--no-fused-optimizer" not in flags)
    expected = recipe("tiny", epochs=3, max_batch_size=8 if "8" in flags else None)
    assert local.max_batch_size == expected.max_batch_size and local.optimizer == "adamw"


def test_an_unset_option_takes_the_recipes_value_in_every_form():
    tiny = SimulateConfig(clients_manifest="c", run_dir="r", recipe="tiny")
    assert (tiny.batch_size, tiny.newbob, tiny.lr_encoder) == (16, False, 2e-3)
    # the run config writes an unset option as "" (TOML has no null): the recipe's value again
    run_config = {**tiny.to_run_config(), "batch-size": "", "newbob": ""}
    assert SimulateConfig.from_run_config(run_config) == tiny
    assert SimulateConfig.from_run_config({**run_config, "recipe": "paper"}).newbob is True
    # an explicit value wins over the recipe, and is recorded as given
    assert SimulateConfig(clients_manifest="c", run_dir="r", recipe="tiny", newbob=True).train_config().newbob


def test_resumable_keys_are_declared_once():
    assert opts.resumable(SimulateConfig) == ("rounds", "round_timeout", "keep_checkpoints", "resume",
                                              "dp_max_epsilon", "ray_address", "allow_outside_audio")
    a = SimulateConfig(clients_manifest="c", run_dir="r")
    b = dataclasses.replace(a, rounds=7, round_timeout=3.0, keep_checkpoints=9, resume=True, ray_address="h:6379")
    assert a.differences(b.to_dict()) == []
    assert dataclasses.replace(a, seed=1).differences(a.to_dict()) == ["seed"]
