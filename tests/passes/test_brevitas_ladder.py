"""The mixed-precision ladder: rungs in order until the task is within its budget, QAT stopped early once it is."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from edgemtl.data import load_data
from edgemtl.passes.quantize_brevitas import QuantConfig, quantize_task

QUICK = dict(batch_size=8, calibration_samples=16)


@pytest.fixture(scope="module")
def data():
    return load_data("scenes", "train", n=32), load_data("scenes", "val", n=16)


def test_a_task_within_its_budget_stops_at_the_first_rung_and_the_first_check(data):
    """Calibration alone already within: no QAT step is spent."""
    model, spec = tiny_model("mtl-cnn")
    config = QuantConfig(qat_steps=6, check_every=2, max_relative_loss=0.5, budgets={"depth": 1e6}, **QUICK)
    _, record = quantize_task(model, spec, "depth", *data, config)
    assert [row["rung"] for row in record.rungs] == ["w4a4, first and last layers w8a8"]
    assert record.qat_steps == 0 and record.rungs[0]["within"] and record.rungs[0]["shipped"]
    first_last = record.rungs[0]["layers_at_8_bits"]
    assert len(first_last) == 2 and record.overrides == {name: [8, 8] for name in first_last}
    assert {record.layers[name]["weight_bits"] for name in first_last} == {8}
    assert record.rungs[0]["cost"]["bit_operations"] > 0 and record.rungs[0]["cost"]["provenance"]["kind"] == "estimated"


@pytest.mark.slow
def test_a_task_over_every_rung_climbs_them_all_and_ships_the_best(data):
    model, spec = tiny_model("mtl-cnn")
    config = QuantConfig(qat_steps=2, check_every=1, max_relative_loss=-2.0, **QUICK)  # below any loss: never within
    _, record = quantize_task(model, spec, "depth", *data, config)
    names = [row["rung"] for row in record.rungs]
    assert names[0] == "w4a4, first and last layers w8a8" and names[-2:] == ["w8a8", "w8a8, more QAT"]
    assert len(names) == 5 and "most sensitive" in names[1] and "most sensitive" in names[2]
    raised = [set(row["layers_at_8_bits"]) for row in record.rungs[:3]]
    assert raised[0] < raised[1] < raised[2]  # each sensitivity rung raises more layers, the first/last kept
    assert set(record.sensitivity) == {n for n in record.layers if n not in raised[0]}
    ordered = sorted(record.sensitivity, key=record.sensitivity.get)  # the lowest loss with it at 8 bits first
    assert raised[1] - raised[0] == set(ordered[:len(raised[1] - raised[0])])
    best = min(record.rungs, key=lambda row: row["relative_loss"])
    assert [row["rung"] for row in record.rungs if row["shipped"]] == [best["rung"]]
    assert record.relative_loss == best["relative_loss"] and not any(row["within"] for row in record.rungs)
    costs = [row["cost"]["bit_operations"] for row in record.rungs]
    assert costs[0] < costs[1] < costs[2] < costs[3] == costs[4]  # every raise costs logic; all-w8a8 the most


def test_qat_ends_on_the_best_state_it_checked_not_the_last(data, monkeypatch):
    """A QAT that makes the path worse at every step: the ladder keeps (and reports) the calibrated state. The harm is
    a buffer in the path's state, so restoring the state undoes it, as it undoes real training."""
    from edgemtl.passes import quantize_brevitas
    from edgemtl.passes.brevitas_qat import ladder

    def metric(path, task_spec, data):  # rmse 1 + harm (the float path: 1)
        if not hasattr(path, "harm"):
            path.register_buffer("harm", torch.zeros(()))
        return {"rmse": 1.0 + float(path.harm)}

    def harmful_qat(qmodel, task_spec, train, config, stop=None):
        for step in range(1, config.qat_steps + 1):
            qmodel.harm += 1.0
            if stop is not None and step < config.qat_steps and stop(step):
                return step
        return config.qat_steps

    monkeypatch.setattr(quantize_brevitas, "_metric", metric)
    monkeypatch.setattr(ladder, "qat", harmful_qat)
    model, spec = tiny_model("mtl-cnn")
    config = QuantConfig(precision="w8a8", qat_steps=3, check_every=1, max_relative_loss=-2.0, **QUICK)
    qmodel, record = quantize_task(model, spec, "depth", *data, config)
    assert [(row["rung"], row["qat_steps"], row["relative_loss"]) for row in record.rungs] == [
        ("w8a8", 0, 0.0), ("w8a8, more QAT", 0, 0.0)]
    assert float(qmodel.harm) == 0.0 and record.qat_steps == 0 and record.relative_loss == 0.0


def test_pinned_widths_run_one_rung_at_those_widths(data):
    model, spec = tiny_model("mtl-cnn")
    pinned = {"depth": {"precision": "w8a8", "layers": {"heads.depth.predict": (4, 8)}}}
    config = QuantConfig(qat_steps=2, max_relative_loss=1e-12, pinned=pinned, **QUICK)
    _, record = quantize_task(model, spec, "depth", *data, config)
    assert [row["rung"] for row in record.rungs] == ["pinned widths (--layer-bits file)"]
    assert record.precision == "w8a8" and record.layers["heads.depth.predict"]["weight_bits"] == 4
    assert record.overrides == {"heads.depth.predict": [4, 8]}
