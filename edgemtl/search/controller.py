"""The controller: a compute budget and a task preference in, one width configuration out.

Each task's performance is taken relative to the widest configuration (1.0 = as good as the full model; for a metric
where lower is better, widest / value), then as a share of what that task spans among the candidates within the
budget (0: its worst there, 1: its best), and a configuration's score is the preference-weighted sum of the shares.
Without that second step the task whose metric moves most with width (depth's RMSE triples at the narrowest; a
segmentation mIoU moves a few percent) would decide every choice whatever the preference said. Among the
configurations within the budget the controller takes the highest score: a preferred task pulls decoder width its
way, and the encoder width (shared by every task) is spent where the weighted sum gains most. Candidates are every
point the search evaluated or predicted, plus a search on the predictors aimed at this budget and preference; a
predicted winner is then evaluated for real, and only a real point within the budget is ever returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna

from edgemtl.model.width_front import TuneFront
from edgemtl.model.widths import WidthConfig, WidthSpace
from edgemtl.search.predictors import Predictor, ask_and_predict
from edgemtl.search.study import config_key

FOCUSED_TRIALS, FOCUSED_BATCH = 200, 10   # trials of the predictor-only search aimed at one (budget, preference)
FOCUSED_KEPT = 3                          # its best configurations offered to the controller


@dataclass(frozen=True)
class Point:
    """A configuration with its objectives, evaluated for real or predicted."""

    widths: WidthConfig
    cost: float
    metrics: dict[str, float]
    evaluated: bool


def relative(metrics: dict[str, float], reference: dict[str, float], higher_is_better: dict[str, bool]) -> dict[str, float]:
    """Each task's metric relative to the reference's (the widest): above 1 is better than the full model."""
    out = {}
    for task, value in metrics.items():
        ref = reference[task]
        if higher_is_better[task]:
            out[task] = value / ref if ref else 0.0
        else:
            out[task] = ref / value if value > 0 else float("inf")
    return out


Ranges = dict[str, tuple[float, float]]   # task -> (lowest relative performance, its span) among the candidates


def ranges_of(points: list[Point], reference: dict[str, float], higher_is_better: dict[str, bool]) -> Ranges:
    """Each task's range of relative performance over `points` (what the score's shares are taken of)."""
    rels = [relative(p.metrics, reference, higher_is_better) for p in points]
    return {t: (min(r[t] for r in rels), max(r[t] for r in rels) - min(r[t] for r in rels)) for t in reference}


def score(point: Point, preference: dict[str, float], reference: dict[str, float], higher_is_better: dict[str, bool],
          ranges: Ranges | None = None) -> float:
    """Preference-weighted sum of each task's share of its range (`ranges`; without them, of relative performance)."""
    rel = relative(point.metrics, reference, higher_is_better)
    if ranges is None:
        return sum(weight * rel[task] for task, weight in preference.items())
    return sum(weight * ((rel[task] - ranges[task][0]) / ranges[task][1] if ranges[task][1] > 0 else 1.0)
               for task, weight in preference.items())


def choose(points: list[Point], limit: float, preference: dict[str, float], reference: dict[str, float],
           higher_is_better: dict[str, bool], evaluated_only: bool = False) -> Point | None:
    """The best-scoring point within `limit` (shares of the ranges within it); None when no point fits."""
    fitting = [p for p in points if p.cost <= limit and (p.evaluated or not evaluated_only)]
    if not fitting:
        return None
    ranges = ranges_of(fitting, reference, higher_is_better)
    return max(fitting, key=lambda p: (score(p, preference, reference, higher_is_better, ranges), p.evaluated))


def front_points(front: TuneFront) -> list[Point]:
    """A tune front's points (evaluated and predicted) as the controller takes them."""
    return [Point(p.widths, p.cost, p.metrics, p.source == "evaluated") for p in front.points]


def choose_on_front(front: TuneFront, limit: float, preference: dict[str, float],
                    evaluated_only: bool = True) -> Point | None:
    """The controller's choice among a finished search's points for another budget (`limit`, in the front's cost
    unit) and preference (task -> weight, any positive scale), with no new evaluation: the front's widest point is the
    reference. `evaluated_only=False` lets a predicted point win (its numbers are the predictors', not measured)."""
    higher = {task: objective.higher_is_better for task, objective in front.tasks.items()}
    return choose(front_points(front), limit, preference, front.reference.metrics, higher, evaluated_only)


def focused_candidates(space: WidthSpace, predictors: dict[str, Predictor], tasks: list[str], limit: float,
                       preference: dict[str, float], reference: dict[str, float], higher_is_better: dict[str, bool],
                       ranges: Ranges, seed: int = 0, trials: int = FOCUSED_TRIALS) -> list[Point]:
    """Predicted points from a search on the predictors alone that maximises this preference's score under the
    budget (optuna's TPE with the budget as a constraint; shares of `ranges`, those of the evaluated points within
    the budget); the best few, best first."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    objectives = ("cost", *tasks)
    found = []
    for _ in range(trials // FOCUSED_BATCH):
        for trial, widths, values in ask_and_predict(study, space, predictors, objectives, FOCUSED_BATCH):
            point = Point(widths, values[0], dict(zip(tasks, values[1:])), evaluated=False)
            trial.set_constraint("budget", point.cost - limit)   # feasible at or below zero
            study.tell(trial, score(point, preference, reference, higher_is_better, ranges))
            if point.cost <= limit:
                found.append(point)
    found.sort(key=lambda p: -score(p, preference, reference, higher_is_better, ranges))
    seen, out = set(), []
    for point in found:
        if config_key(point.widths) not in seen:
            seen.add(config_key(point.widths))
            out.append(point)
    return out[:FOCUSED_KEPT]
