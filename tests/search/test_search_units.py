"""The search's pieces on constructed data: budgets and preferences, predictors, the controller, the front."""

from __future__ import annotations

import random

import pytest

from edgemtl.errors import EdgemtlError
from edgemtl.model.widths import WidthOptions, WidthSpace
from edgemtl.model.width_front import CostObjective, FrontPoint, TaskObjective, TuneFront
from edgemtl.search.controller import Point, choose, choose_on_front, front_points, relative
from edgemtl.search.linas import hypervolume, most_contributing, pareto, uniform_configurations
from edgemtl.search.objectives import Budget, parse_preference
from edgemtl.search.predictors import fit_predictor

SPACE = WidthSpace(stages={"s0": WidthOptions(channels=8, modules=("a",)), "s1": WidthOptions(channels=8, modules=("b",))},
                   decoders={"x": WidthOptions(channels=8, modules=("c",)), "y": WidthOptions(channels=8, modules=("d",))})
HIGHER = {"x": True, "y": False}


@pytest.mark.parametrize("text, message", [
    ("macs", "expected macs=FRACTION"), ("flops=0.5", "expected macs=FRACTION"), ("macs=half", "not a number"),
    ("macs=0", "a fraction in (0, 1]"), ("macs=1.5", "a fraction in (0, 1]"), ("latency_ms=-2", "a positive number"),
])
def test_bad_budgets_are_one_line(text, message):
    with pytest.raises(EdgemtlError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        Budget.parse(text)


def test_budget_outside_the_reachable_range_says_the_range():
    Budget.parse("memory_kib=50").check_reachable(narrowest_cost=10, widest_cost=100)
    with pytest.raises(EdgemtlError, match="reachable range 10-100 KiB"):
        Budget.parse("memory_kib=5").check_reachable(10, 100)
    with pytest.raises(EdgemtlError, match="reachable range 10-100 KiB"):
        Budget.parse("memory_kib=500").check_reachable(10, 100)
    with pytest.raises(EdgemtlError, match=r"reachable range 0\.2-1"):
        Budget.parse("macs=0.1").check_reachable(20, 100)


def test_preferences_are_normalised_and_checked():
    assert parse_preference("x=3", ["x", "y"]) == {"x": 0.75, "y": 0.25}
    assert parse_preference(None, ["x", "y"]) == {"x": 0.5, "y": 0.5}
    for text, message in (("z=1", "unknown task 'z'"), ("x=0", "must be positive"), ("x=-1", "must be positive"),
                          ("x=a", "with a number")):
        with pytest.raises(EdgemtlError, match=message):
            parse_preference(text, ["x", "y"])


def test_predictor_learns_a_product_cost_and_ranks_it():
    """A MACs-like cost (products of neighbouring widths) is what ridge on the pairwise features fits exactly."""
    rng = random.Random(0)
    configs = [SPACE.sample(rng) for _ in range(30)]

    def macs(c):
        return 100 * c.encoder["s0"] * c.encoder["s1"] + 50 * c.encoder["s1"] * (c.decoders["x"] + c.decoders["y"])

    predictor = fit_predictor("cost", SPACE, configs, [macs(c) for c in configs])
    assert predictor.kind in ("ridge", "svr") and set(predictor.candidates_mape) == {"ridge", "svr"}
    assert predictor.mape < 0.05 and predictor.kendall_tau > 0.9
    fresh = [SPACE.sample(rng) for _ in range(10)]
    assert all(abs(p - macs(c)) / macs(c) < 0.1 for p, c in zip(predictor.predict(fresh), fresh))
    with pytest.raises(ValueError, match="at least 4"):
        fit_predictor("cost", SPACE, configs[:3], [1.0, 2.0, 3.0])


def _point(cost, x, y, evaluated=True, seed=0):
    return Point(SPACE.sample(random.Random(seed)), cost, {"x": x, "y": y}, evaluated)


def test_relative_performance_reads_each_metric_its_own_way():
    assert relative({"x": 0.5, "y": 4.0}, {"x": 1.0, "y": 2.0}, HIGHER) == {"x": 0.5, "y": 0.5}


def test_controller_stays_within_the_budget_and_follows_the_preference():
    reference = {"x": 1.0, "y": 1.0}
    good_x, good_y, too_costly = _point(5, 0.9, 2.0), _point(5, 0.5, 1.1), _point(50, 1.0, 1.0)
    points = [good_x, good_y, too_costly]
    assert choose(points, 10, {"x": 0.9, "y": 0.1}, reference, HIGHER) is good_x
    assert choose(points, 10, {"x": 0.1, "y": 0.9}, reference, HIGHER) is good_y
    assert choose(points, 100, {"x": 0.5, "y": 0.5}, reference, HIGHER) is too_costly
    assert choose(points, 1, {"x": 0.5, "y": 0.5}, reference, HIGHER) is None
    predicted = _point(5, 1.0, 1.0, evaluated=False)
    assert choose(points + [predicted], 10, {"x": 0.5, "y": 0.5}, reference, HIGHER) is predicted
    assert choose(points + [predicted], 10, {"x": 0.5, "y": 0.5}, reference, HIGHER, evaluated_only=True) is not predicted


def test_a_finished_front_answers_another_budget_and_preference_without_evaluating():
    def point(cost, x, y, source="evaluated", seed=0):
        return FrontPoint(widths=SPACE.sample(random.Random(seed)), cost=cost, metrics={"x": x, "y": y}, source=source)

    widest, good_x, good_y, guess = point(10, 1.0, 1.0), point(5, 0.9, 2.0, seed=1), point(5, 0.5, 1.1, seed=2), \
        point(4, 1.0, 1.0, "predicted", seed=3)
    front = TuneFront(model_sha256="0" * 64, target="host", cost=CostObjective(kind="macs", unit="MACs", limit=6,
                                                                                 budget="macs=0.6"),
                      tasks={"x": TaskObjective(metric="miou", higher_is_better=True, preference=0.5),
                             "y": TaskObjective(metric="rmse", higher_is_better=False, preference=0.5)},
                      reference=widest, points=[widest, good_x, good_y, guess], chosen=good_x, relative={})
    assert [(p.cost, p.evaluated) for p in front_points(front)] == [(10, True), (5, True), (5, True), (4, False)]
    assert choose_on_front(front, 6, {"x": 9, "y": 1}).widths == good_x.widths      # weights on any scale
    assert choose_on_front(front, 6, {"x": 1, "y": 9}).widths == good_y.widths
    assert choose_on_front(front, 10, {"x": 1, "y": 1}).widths == widest.widths
    assert choose_on_front(front, 4.5, {"x": 1, "y": 1}) is None
    assert not choose_on_front(front, 4.5, {"x": 1, "y": 1}, evaluated_only=False).evaluated


def test_pareto_and_hypervolume():
    reference = _point(10, 1.0, 1.0)
    a, b, dominated = _point(2, 0.8, 1.5), _point(6, 0.95, 1.1), _point(7, 0.7, 2.0)
    assert pareto([a, b, dominated], HIGHER) == [a, b]
    bounds = (1.1, {"x": 0.5, "y": 0.4})
    both, one = hypervolume([a, b], reference, HIGHER, bounds), hypervolume([a], reference, HIGHER, bounds)
    assert both > one > 0
    assert hypervolume([a, b, dominated], reference, HIGHER, bounds) == pytest.approx(both)


def test_the_candidates_that_add_most_hypervolume_are_evaluated_first():
    reference, known = _point(10, 1.0, 1.0), _point(5, 0.8, 1.5)
    inside, gap, cheap = _point(6, 0.7, 1.6), _point(2, 0.9, 1.2), _point(1.5, 0.6, 1.8)
    picked = most_contributing([inside, gap, cheap], [reference, known], 1, HIGHER)
    assert picked == [gap]                          # dominates the most of what the known points leave open
    assert most_contributing([inside, gap, cheap], [reference, known], 2, HIGHER)[1] is cheap  # inside adds nothing
    assert most_contributing([gap], [reference, known], 3, HIGHER) == [gap]


def test_uniform_configurations_come_first():
    configs = uniform_configurations(SPACE)
    assert configs[0] == SPACE.widest() and configs[1] == SPACE.narrowest()
    assert [c.encoder["s0"] for c in configs[2:]] == [0.75, 0.5]
    assert all(len(set(c.encoder.values()) | set(c.decoders.values())) == 1 for c in configs)


@pytest.mark.parametrize("target, kind, provenance", [
    ("host", "latency_ms", "measured"), ("zcu104", "latency_ms", "estimated"), ("gap9", "memory_kib", "estimated"),
    ("arm64", "macs", "static"),
])
def test_each_target_gives_its_cost_with_provenance(target, kind, provenance):
    from conftest import tiny_slimmable_model

    from edgemtl.passes.slice_widths import slice_model
    from edgemtl.search.objectives import CostMeter
    from edgemtl.targets import load_target

    model, spec = tiny_slimmable_model()
    meter = CostMeter(kind, load_target(target), runs=5)
    wide, _ = meter(model, spec)
    narrow, label = meter(*slice_model(model, spec, spec.widths.narrowest()))
    assert label["kind"] == provenance and narrow > 0 and wide > 0
    if provenance != "measured":           # a timing on a shared machine may not order two tiny models
        assert narrow < wide


def test_gap9_latency_is_refused_with_what_to_do():
    from edgemtl.search.objectives import CostMeter
    from edgemtl.targets import load_target

    with pytest.raises(EdgemtlError, match="budget macs or memory_kib instead"):
        CostMeter("latency_ms", load_target("gap9"))


def test_predictions_stay_near_the_evaluated_range():
    """A linear fit extrapolates an RMSE below zero at the edge of the space; the search must never see one."""
    rng = random.Random(1)
    configs = [SPACE.sample(rng) for _ in range(12)]
    values = [1.0 + 2 * (1 - c.encoder["s0"]) for c in configs]
    predictor = fit_predictor("depth", SPACE, configs, values)
    low, high = predictor.bounds
    assert 0 < low <= min(values) and high >= max(values)
    assert all(low <= p <= high for p in predictor.predict([SPACE.sample(rng) for _ in range(50)]))


def test_a_preference_for_a_task_whose_metric_moves_little_still_decides():
    """x moves a few percent across the candidates, y (lower is better) triples: without taking each task's range
    within the budget, y would decide whatever the preference."""
    reference = {"x": 1.0, "y": 1.0}
    good_x, good_y = _point(5, 0.98, 3.0), _point(5, 0.94, 1.2)
    assert choose([good_x, good_y], 10, {"x": 0.8, "y": 0.2}, reference, HIGHER) is good_x
    assert choose([good_x, good_y], 10, {"x": 0.2, "y": 0.8}, reference, HIGHER) is good_y


def test_a_trial_another_process_finished_first_is_dropped_not_fatal(tmp_path):
    """SQLite has no row locks: two processes may claim the same waiting trial; the slower one's result is dropped."""
    import optuna

    from edgemtl.search.evaluate import Evaluation
    from edgemtl.search.study import RealEvaluations, open_storage

    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    real = RealEvaluations.create(storage, "race", SPACE, ["x", "y"], HIGHER,
                                  {"model_sha256": "0" * 64, "tasks": ["x", "y"], "cost": "macs"})
    real.enqueue([SPACE.widest()])
    mine = real.claim()
    other = optuna.load_study(study_name="race", storage=storage)
    other.tell(mine.number, [1.0, 0.5, 0.5])            # the other process finished it first

    def evaluate(widths):
        return Evaluation(widths, {"x": 0.4, "y": 0.6}, 2.0)

    assert real.run_one(mine, evaluate) is False
    assert [values for _, values, _ in real.completed()] == [[1.0, 0.5, 0.5]]
