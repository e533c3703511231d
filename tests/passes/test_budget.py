"""The accuracy budget: who sets each task's value, what is refused, and what a loss is."""

from __future__ import annotations

import pytest

from edgemtl.errors import EdgemtlError
from edgemtl.passes.budget import Budget, agreement_loss, relative_loss, resolve

TASKS = ["depth", "scene"]


def test_the_target_sets_the_default_and_the_user_overrides_per_task_or_for_every_task():
    budget = resolve({"depth": 0.05}, TASKS, 0.03, "zcu104")
    assert (budget.of("depth"), budget.of("scene")) == (0.05, 0.03)
    assert (budget.origin("depth"), budget.origin("scene")) == ("--max-drop", "target zcu104")
    every = resolve({"*": 0.1, "scene": 0.2}, TASKS, 0.03, "zcu104", allow_over=True)
    assert (every.of("depth"), every.of("scene"), every.source, every.allow_over) == (0.1, 0.2, "--max-drop", True)


@pytest.mark.parametrize("asked, default, pattern", [
    ({"colour": 0.1}, 0.03, "unknown task(s) colour"),
    ({"depth": 0.0}, 0.03, "in (0, 1)"),
    ({"depth": 1.0}, 0.03, "in (0, 1)"),
    ({"*": -0.5}, 0.03, "in (0, 1)"),
    ({}, None, "states no max_drop"),
])
def test_bad_budgets_are_refused_in_one_line(asked, default, pattern):
    with pytest.raises(EdgemtlError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        resolve(asked, TASKS, default, "t")
    with pytest.raises(EdgemtlError):
        Budget(1.5)


def test_a_loss_is_worse_positive_whichever_way_the_metric_points():
    assert relative_loss(0.5, 0.55, higher_is_better=False) == pytest.approx((0.1, 0.1))
    assert relative_loss(0.8, 0.76, higher_is_better=True) == pytest.approx((-0.05, 0.05))
    assert relative_loss(0.8, 0.84, higher_is_better=True)[1] < 0
    assert agreement_loss({"cosine_vs_float": 0.97, "sqnr_db_vs_float": 14.0}) == pytest.approx(0.03)
