"""The privacy-utility sweep's summary (`fedw2v.privacy.sweep`, run by examples/privacy_sweep.sh): one row per run
from its config.json, metrics.jsonl and footprint.json; the table and the plot."""

from __future__ import annotations

import json

import pytest

from fedw2v.privacy import sweep


def _fake_run(root, name, dp="off", z=1.0, clip=1.0, epsilon=None, wer=(0.9, 0.8), cer=(0.5, 0.4),
              pooled=(30.0, 12.5, 20.0), ci=((20, 40), (5.0, 25.0), (10, 30))):
    run = root / name
    run.mkdir()
    config = {"dp": dp, "dp_noise_multiplier": z, "dp_clip": clip, "dp_delta": 1e-5, "extra": {}}
    if dp != "off":
        config["extra"]["privacy"] = {"epsilon": epsilon, "epsilon_infinite": epsilon is None}
    (run / "config.json").write_text(json.dumps(config))
    events = [{"event": "evaluate", "round": r, "wer": w, "cer": c} for r, (w, c) in enumerate(zip(wer, cer))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    layers = ["input", "block 1", "block 2"][: len(pooled)]
    best = min(range(len(pooled)), key=lambda k: pooled[k])
    report = {"layers": layers, "pooled": {"eer": list(pooled), "ci": [list(c) for c in ci]},
              "best_layer": {"layer": layers[best], "eer": pooled[best]}}
    (run / sweep.FOOTPRINT_REPORT).write_text(json.dumps(report))
    return run


def test_a_row_holds_the_final_evaluation_the_lowest_pooled_eer_and_its_interval(tmp_path):
    run = _fake_run(tmp_path, "local", dp="local", z=0.003, clip=5.0, epsilon=1234.5)
    row = sweep.summarise(run)
    assert (row.mode, row.z, row.clip, row.epsilon, row.rounds) == ("local", 0.003, 5.0, 1234.5, 1)
    assert (row.wer, row.cer) == (pytest.approx(80.0), pytest.approx(40.0))  # the last evaluation, in %
    assert (row.eer, row.eer_ci, row.eer_layer) == (12.5, (5.0, 25.0), "block 1")
    assert row.cells() == ["local", "0.003", "5", "1.23e+03", "80.00", "40.00", "12.5 (block 1)", "5.0-25.0"]
    off = sweep.summarise(_fake_run(tmp_path, "off", z=1.0))
    assert (off.z, off.clip, off.epsilon_text) == (None, None, "-")  # no DP: its defaults mean nothing
    inf = sweep.summarise(_fake_run(tmp_path, "z0", dp="central", z=0.0, epsilon=None))
    assert inf.epsilon_text == "∞"


def test_main_prints_one_table_and_draws_the_plot(tmp_path, capsys):
    runs = [_fake_run(tmp_path, "off"), _fake_run(tmp_path, "central", dp="central", z=1.0, epsilon=7.25,
                                                  pooled=(22.0, 18.0, 40.0))]
    png = tmp_path / "sweep.png"
    assert sweep.main([str(r) for r in runs] + ["--plot", str(png), "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| --dp | z | C | final ε |") and len(out) == 2 + 2 + 1  # header, rule, rows, plot
    assert out[2].startswith("| off | - | - | - |") and "| central | 1 | 1 | 7.25 |" in out[3]
    assert "18.0 (block 1)" in out[3] and png.read_bytes().startswith(b"\x89PNG")


def test_a_run_without_its_footprint_report_is_one_line_and_exit_2(tmp_path, capsys):
    run = _fake_run(tmp_path, "off")
    (run / sweep.FOOTPRINT_REPORT).unlink()
    assert sweep.main([str(run), "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no footprint.json" in err and not (tmp_path / "p.png").exists()


def test_plot_labels_of_nearby_points_do_not_sit_on_each_other():
    from fedw2v.plots import _label_offsets

    points = [{"cer": 36.0, "eer": 27.8, "label": "no DP"}, {"cer": 36.5, "eer": 28.5, "label": "local z 0.003, ε 1e6"},
              {"cer": 36.9, "eer": 27.0, "label": "central z 0.003, ε 4e5"}, {"cer": 98.0, "eer": 44.4,
              "label": "central z 1, ε 13.8"}, {"cer": 60.0, "eer": 10.0, "label": "alone"}]  # fmt: skip
    offsets = _label_offsets(points)
    assert len({dy for _, dy, _ in offsets[:3]}) == 3  # three labels of one cluster: three heights
    assert offsets[3] == (-6, 4, "right") and offsets[4] == (5, 4, "left")  # the right edge's label goes left
