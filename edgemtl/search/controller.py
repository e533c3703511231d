"""The controller: a compute budget and a task preference in, one width configuration out.

Each task's performance is taken relative to the widest configuration (1.0 = as good as the full model; for a metric
where lower is better, widest / value), and a configuration's score is the preference-weighted sum of those. Among
the configurations within the budget the controller takes the highest score: a preferred task pulls decoder width
its way, and the encoder width (shared by every task) is spent where the weighted sum gains most. Candidates are every
point the search evaluated or predicted, plus a search on the predictors aimed at this budget and preference; a
predicted winner is then evaluated for real, and only a real point within the budget is ever returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna

from edgemtl.model.widths import WidthConfig, WidthSpace
from edgemtl.search.predictors import Predictor
from edgemtl.search.study import from_params, param_names

FOCUSED_TRIALS = 300   # trials of the predictor-only search aimed at one (budget, preference)


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


def score(point: Point, preference: dict[str, float], reference: dict[str, float],
          higher_is_better: dict[str, bool]) -> float:
    rel = relative(point.metrics, reference, higher_is_better)
    return sum(weight * rel[task] for task, weight in preference.items())


def choose(points: list[Point], limit: float, preference: dict[str, float], reference: dict[str, float],
           higher_is_better: dict[str, bool], evaluated_only: bool = False) -> Point | None:
    """The best-scoring point within `limit`; None when no point fits."""
    fitting = [p for p in points if p.cost <= limit and (p.evaluated or not evaluated_only)]
    if not fitting:
        return None
    return max(fitting, key=lambda p: (score(p, preference, reference, higher_is_better), p.evaluated))


def focused_candidates(space: WidthSpace, predictors: dict[str, Predictor], tasks: list[str], limit: float,
                       preference: dict[str, float], reference: dict[str, float], higher_is_better: dict[str, bool],
                       seed: int = 0, trials: int = FOCUSED_TRIALS) -> list[Point]:
    """Predicted points from a search on the predictors alone that maximises this preference's score under the
    budget (optuna's TPE with the budget as a constraint); the best few, best first."""
    names = param_names(space)

    def predicted(trial: optuna.Trial) -> Point:
        widths = from_params({n: trial.suggest_categorical(n, list(c)) for n, c in names.items()})
        cost = float(predictors["cost"].predict([widths])[0])
        metrics = {t: float(predictors[t].predict([widths])[0]) for t in tasks}
        trial.set_user_attr("cost", cost)
        trial.set_constraint("budget", cost - limit)   # feasible at or below zero
        return Point(widths, cost, metrics, evaluated=False)

    def objective(trial: optuna.Trial) -> float:
        return score(predicted(trial), preference, reference, higher_is_better)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    feasible = [t for t in study.trials if t.user_attrs.get("cost", np.inf) <= limit and t.value is not None]
    feasible.sort(key=lambda t: -t.value)
    seen, out = set(), []
    for trial in feasible:
        widths = from_params(trial.params)
        key = widths.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(Point(widths, trial.user_attrs["cost"],
                             {t: float(predictors[t].predict([widths])[0]) for t in tasks}, evaluated=False))
        if len(out) == 3:
            break
    return out
