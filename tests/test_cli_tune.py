"""`edgemtl tune`: a small search end to end, two processes sharing one SQLite study, and every bad input one line,
exit 2, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from conftest import tiny_model, tiny_slimmable_model
from test_cli import assert_one_line_error, run_cli

from edgemtl.model.checkpoint import save
from edgemtl.model.width_front import front_path, read_front
from edgemtl.model.widths import read_width_config

SMALL = ("--held-out", "16", "--initial", "2", "--rounds", "1", "--per-round", "2")


@pytest.fixture(scope="module")
def slimmable(tmp_path_factory):
    model, spec = tiny_slimmable_model()
    return save(model, spec, tmp_path_factory.mktemp("tune") / "slim.pt")


def test_tune_writes_a_configuration_compile_takes_and_its_front(capsys, tmp_path, slimmable):
    output = tmp_path / "out" / "widths.json"
    code, out, err = run_cli(capsys, "tune", slimmable, "--budget", "macs=0.6", "--prefer", "depth=4", "-o", output,
                             *SMALL)
    assert code == 0, err
    widths = read_width_config(output)          # a bare width configuration, nothing else in the file
    assert set(json.loads(output.read_text())) == {"encoder", "decoders"}
    front = read_front(front_path(output))
    assert front.chosen.widths == widths and front.chosen.source == "evaluated"
    assert front.chosen.cost <= front.cost.limit == pytest.approx(0.6 * front.reference.cost)
    assert front.tasks["depth"].preference == pytest.approx(4 / 8)
    evaluated = [p for p in front.points if p.source == "evaluated"]
    assert len(evaluated) == front.study["real_evaluations"] >= 4 + 2 + 1   # the 4 uniform configurations, 2 random, the round's
    assert all(p.provenance["cost"].kind == "static" and p.provenance["metrics"].kind == "evaluated" for p in evaluated)
    assert all(p.provenance["cost"].kind == "estimated" for p in front.points if p.source == "predicted")
    assert any(p.pareto for p in evaluated) and set(front.predictors) == {"cost", *front.tasks}
    assert all({"mape", "kendall_tau", "model"} <= set(s) for s in front.predictors.values())
    assert "chosen for macs=0.6" in out
    code, _, err = run_cli(capsys, "compile", slimmable, "--widths", output, "--target", "host", "-o",
                           tmp_path / "bundle", "--stop-after", "slice_widths")
    assert code == 0, err


@pytest.mark.slow
def test_a_restarted_search_reuses_the_study(capsys, tmp_path, slimmable):
    output = tmp_path / "widths.json"
    args = ("tune", slimmable, "--budget", "macs=0.6", "-o", output, "--held-out", "16", "--initial", "4",
            "--rounds", "0")
    assert run_cli(capsys, *args)[0] == 0
    first = read_front(front_path(output)).study["real_evaluations"]
    assert run_cli(capsys, *args)[0] == 0
    assert read_front(front_path(output)).study["real_evaluations"] == first   # nothing evaluated twice


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path, slimmable):
    """The searcher waits for the worker to attach (--workers 1), then both take configurations from its queue; no
    configuration is evaluated twice."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    worker = subprocess.Popen([sys.executable, "-m", "edgemtl", "tune", str(slimmable), "--storage", storage,
                               "--worker"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    searcher = subprocess.run([sys.executable, "-m", "edgemtl", "tune", str(slimmable), "--storage", storage,
                               "--budget", "macs=0.7", "-o", str(tmp_path / "w.json"), "--held-out", "16", "--workers", "1",
                               "--initial", "12", "--rounds", "1", "--per-round", "4"],
                              capture_output=True, text=True, timeout=600)
    assert searcher.returncode == 0, searcher.stderr
    worker_out, worker_err = worker.communicate(timeout=120)
    assert worker.returncode == 0, worker_err
    assert "configuration(s) evaluated" in worker_out
    study = optuna.load_study(study_name=read_front(tmp_path / "w.front.json").study["name"], storage=storage)
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    processes = {t.user_attrs["worker"] for t in trials}
    assert len(processes) == 2, processes
    keys = [tuple(sorted(t.params.items())) for t in trials]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("args, message", [
    (("--budget", "macs=0.6", "--prefer", "sky=2"), "unknown task 'sky'"),
    (("--budget", "macs=0.6", "--prefer", "depth=0"), "must be positive"),
    (("--budget", "macs=0.6", "--prefer", "depth=-1"), "must be positive"),
    (("--budget", "macs=0.01"), "outside the reachable range"),
    (("--budget", "memory_kib=1000000"), "outside the reachable range"),
    (("--budget", "watts=2"), "expected macs=FRACTION"),
    ((), "tune needs --budget"),
    (("--budget", "macs=0.6", "--target", "nosuchboard"), "nosuchboard"),
    (("--budget", "macs=0.6", "--storage", "nosuchdb://x"), "cannot open the study storage"),
    (("--budget", "latency_ms=1", "--target", "gap9"), "budget macs or memory_kib instead"),
])
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, slimmable, args, message):
    output = tmp_path / "out" / "widths.json"
    code, _, err = run_cli(capsys, "tune", slimmable, "-o", output, *args)
    assert_one_line_error(code, err, message)
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_a_model_that_is_not_slimmable_is_one_line(capsys, tmp_path):
    model, spec = tiny_model("mtl-cnn")
    checkpoint = save(model, spec, tmp_path / "plain.pt")
    code, _, err = run_cli(capsys, "tune", checkpoint, "--budget", "macs=0.5", "-o", tmp_path / "out" / "w.json")
    assert_one_line_error(code, err, "needs a slimmable model")
    assert not (tmp_path / "out").exists()


def test_device_needs_a_latency_budget_on_a_cpu_target(capsys, tmp_path, slimmable):
    for args, message in ((("--budget", "macs=0.5", "--device", "rpc://127.0.0.1:9190/x"), "needs --budget latency_ms"),
                          (("--budget", "latency_ms=1", "--device", "nonsense"), "unknown device 'nonsense'")):
        code, _, err = run_cli(capsys, "tune", slimmable, "-o", tmp_path / "out" / "w.json", *args)
        assert_one_line_error(code, err, message)
        assert not (tmp_path / "out").exists()
