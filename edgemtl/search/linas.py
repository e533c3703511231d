"""The LINAS loop (DyNAS-T's lightweight iterative NAS): few real evaluations, many predicted ones.

1. The uniform configurations (one multiplier everywhere, the widest and narrowest among them) and a random
   population are evaluated for real.
2. Each round: one predictor per objective is fitted on every real evaluation so far (`predictors`); NSGA-II
   (optuna's NSGAIISampler) runs on the predictors alone for many generations (the inner loop, milliseconds per
   configuration); from its final front, the configurations that add most to the evaluated front's hypervolume
   (by their predicted objectives, greedily, a Monte Carlo estimate) are evaluated for real (the outer loop). With
   six objectives almost every point is non-dominated, so which of them is evaluated decides how fast the real
   front grows.
3. The last inner front is kept as predicted points beside the real ones, each said to be which.

`nsga2_real` is the same NSGA-II with every configuration evaluated for real: the baseline LINAS is measured against
(benchmarks/controllable.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import optuna
from optuna._hypervolume import compute_hypervolume   # optuna's own WFG hypervolume (no public alias in 5.x)

from edgemtl.model.widths import WidthConfig, WidthSpace
from edgemtl.search.controller import Point, relative
from edgemtl.search.evaluate import Evaluation
from edgemtl.search.predictors import Predictor, ask_and_predict, fit_predictor
from edgemtl.search.study import RealEvaluations, config_key, from_params, param_names


@dataclass(frozen=True)
class SearchSettings:
    initial: int = 8         # random configurations evaluated first (besides the uniform ones: widest, narrowest...)
    rounds: int = 7          # outer iterations: the predictors are refitted after every few real evaluations
    per_round: int = 4       # configurations of each round's predicted front evaluated for real
    population: int = 32     # NSGA-II population of the inner loop
    generations: int = 20    # NSGA-II generations of the inner loop
    seed: int = 0

    def real_evaluations(self, space: WidthSpace) -> int:
        return len(uniform_configurations(space)) + self.initial + self.rounds * self.per_round


@dataclass
class SearchOutcome:
    evaluated: list[Point]
    predicted: list[Point]            # the last inner front, minus what was evaluated
    predictors: dict[str, Predictor]  # "cost" and each task


def uniform_configurations(space: WidthSpace) -> list[WidthConfig]:
    """The widest, the narrowest and every configuration with one multiplier everywhere (a decoder that allows only
    1.0 keeps it): the uniform shrinks a user would try first, evaluated before any random one."""
    groups = [o for o in (*space.stages.values(), *space.decoders.values()) if len(o.multipliers) > 1]
    common = set.intersection(*(set(o.multipliers) for o in groups)) if groups else set()
    configs = [space.widest(), space.narrowest()]
    for multiplier in sorted(common, reverse=True):
        config = WidthConfig(encoder={n: multiplier if len(o.multipliers) > 1 else 1.0 for n, o in space.stages.items()},
                             decoders={n: multiplier if len(o.multipliers) > 1 else 1.0
                                       for n, o in space.decoders.items()})
        if all(config_key(config) != config_key(c) for c in configs):
            configs.append(config)
    return configs


def directions(tasks: list[str], higher_is_better: dict[str, bool]) -> list[str]:
    return ["minimize"] + ["maximize" if higher_is_better[t] else "minimize" for t in tasks]


def evaluated_points(real: RealEvaluations) -> list[Point]:
    return [Point(widths, values[0], dict(zip(real.tasks, values[1:])), evaluated=True)
            for widths, values, _ in real.completed()]


def fit_predictors(space: WidthSpace, points: list[Point], tasks: list[str], seed: int) -> dict[str, Predictor]:
    configs = [p.widths for p in points]
    fitted = {"cost": fit_predictor("cost", space, configs, [p.cost for p in points], seed)}
    for task in tasks:
        fitted[task] = fit_predictor(task, space, configs, [p.metrics[task] for p in points], seed)
    return fitted


def predicted_front(space: WidthSpace, predictors: dict[str, Predictor], tasks: list[str], senses: list[str],
                    settings: SearchSettings, seed: int) -> list[Point]:
    """NSGA-II on the predictors alone; the non-dominated configurations of its run, predicted."""
    sampler = optuna.samplers.NSGAIISampler(population_size=settings.population, seed=seed)
    study = optuna.create_study(directions=senses, sampler=sampler)
    for _ in range(settings.generations):   # a generation at a time: one predictor call per objective per generation
        for trial, _, values in ask_and_predict(study, space, predictors, ("cost", *tasks), settings.population):
            study.tell(trial, values)
    unique = {config_key(from_params(t.params)): t for t in study.best_trials}
    return [Point(from_params(t.params), t.values[0], dict(zip(tasks, t.values[1:])), evaluated=False)
            for t in unique.values()]


def most_contributing(candidates: list[Point], evaluated: list[Point], count: int, higher_is_better: dict[str, bool],
                      seed: int = 0, samples: int = 20000) -> list[Point]:
    """Greedily, the `count` candidates whose (predicted) objectives add most hypervolume to the evaluated points'.

    Objectives as in `hypervolume` (cost over the widest's, each task relative to the widest, all minimised); the
    volume is estimated on `samples` uniform points of the box the candidates and evaluated points span (an exact
    six-objective hypervolume per candidate would cost seconds each)."""
    if len(candidates) <= count:
        return list(candidates)
    widest = max(evaluated, key=lambda p: p.cost)
    tasks = list(widest.metrics)

    def vector(point: Point) -> list[float]:
        rel = relative(point.metrics, widest.metrics, higher_is_better)
        return [point.cost / widest.cost] + [-rel[t] for t in tasks]

    known = np.array([vector(p) for p in pareto(evaluated, higher_is_better)])
    offered = np.array([vector(p) for p in candidates])
    if not np.all(np.isfinite(offered)) or not np.all(np.isfinite(known)):
        raise ValueError("objectives must be finite to compare hypervolume contributions")
    everything = np.vstack([known, offered])
    low, high = everything.min(axis=0), everything.max(axis=0)
    high = high + 0.1 * (high - low) + 1e-9   # the reference point: past the worst, so the extremes add volume too
    box = np.random.default_rng(seed).uniform(low, high, size=(samples, len(low)))
    covered = np.zeros(samples, dtype=bool)
    for point in known:
        covered |= np.all(box >= point, axis=1)
    dominates = np.stack([np.all(box >= point, axis=1) for point in offered])   # candidate x sample
    chosen: list[int] = []
    for _ in range(count):
        gains = (dominates & ~covered).sum(axis=1)
        gains[chosen] = -1
        best = int(np.argmax(gains))
        chosen.append(best)
        covered |= dominates[best]
    return [candidates[i] for i in chosen]


def linas(space: WidthSpace, real: RealEvaluations, evaluate: Callable[[WidthConfig], Evaluation],
          higher_is_better: dict[str, bool], settings: SearchSettings = SearchSettings(),
          progress: Callable[[str, int, int], None] | None = None) -> SearchOutcome:
    """Run the loop; real evaluations go through `real` (and any workers attached to its study)."""
    tasks, senses = real.tasks, directions(real.tasks, higher_is_better)
    rng = random.Random(settings.seed)
    first = uniform_configurations(space)
    keys = {config_key(c) for c in first}
    wanted = len(first) + min(settings.initial, space.size() - len(first))
    for _ in range(50 * (settings.initial + 1)):
        if len(first) >= wanted:
            break
        sample = space.sample(rng)
        if config_key(sample) not in keys:
            keys.add(config_key(sample))
            first.append(sample)
    _evaluate(real, first, evaluate, "random population", progress)
    for round_index in range(settings.rounds):
        points = evaluated_points(real)
        predictors = fit_predictors(space, points, tasks, settings.seed)
        front = predicted_front(space, predictors, tasks, senses, settings, settings.seed + round_index)
        seen = {config_key(p.widths) for p in points}
        fresh = [p for p in front if config_key(p.widths) not in seen]
        picks = most_contributing(fresh, points, settings.per_round, higher_is_better, settings.seed + round_index)
        _evaluate(real, [p.widths for p in picks], evaluate, f"round {round_index + 1}/{settings.rounds}", progress)
    points = evaluated_points(real)
    predictors = fit_predictors(space, points, tasks, settings.seed)
    seen = {config_key(p.widths) for p in points}
    front = predicted_front(space, predictors, tasks, senses, settings, settings.seed + settings.rounds)
    return SearchOutcome(points, [p for p in front if config_key(p.widths) not in seen], predictors)


def _evaluate(real: RealEvaluations, configs: list[WidthConfig], evaluate: Callable[[WidthConfig], Evaluation],
              label: str, progress: Callable[[str, int, int], None] | None) -> None:
    real.evaluate(configs, evaluate, None if progress is None else lambda done: progress(label, done, len(configs)))


def nsga2_real(space: WidthSpace, evaluate: Callable[[WidthConfig], Evaluation], tasks: list[str],
               higher_is_better: dict[str, bool], trials: int, population: int, seed: int = 0) -> list[Point]:
    """Plain NSGA-II with every configuration evaluated for real (the baseline), in evaluation order."""
    names = param_names(space)
    points: list[Point] = []

    def objective(trial: optuna.Trial) -> list[float]:
        result = evaluate(from_params({n: trial.suggest_categorical(n, list(c)) for n, c in names.items()}))
        points.append(Point(result.widths, result.cost, result.metrics, evaluated=True))
        return [result.cost] + [result.metrics[t] for t in tasks]

    study = optuna.create_study(directions=directions(tasks, higher_is_better),
                                sampler=optuna.samplers.NSGAIISampler(population_size=population, seed=seed))
    study.optimize(objective, n_trials=trials)
    return points


def pareto(points: list[Point], higher_is_better: dict[str, bool]) -> list[Point]:
    """The non-dominated points (cost down, every task's metric its own way)."""
    def vector(p: Point) -> np.ndarray:
        return np.array([p.cost] + [-v if higher_is_better[t] else v for t, v in p.metrics.items()])

    vectors = [vector(p) for p in points]
    return [p for i, p in enumerate(points)
            if not any(np.all(w <= vectors[i]) and np.any(w < vectors[i]) for j, w in enumerate(vectors) if j != i)]


def hypervolume(points: list[Point], reference: Point, higher_is_better: dict[str, bool],
                bounds: tuple[float, dict[str, float]]) -> float:
    """Hypervolume of `points` in (cost / widest cost, each task's performance relative to the widest), dominated
    up to `bounds` = (the largest normalised cost, the lowest relative performance per task) that counts."""
    worst_cost, worst_relative = bounds
    rows = []
    for p in points:
        rel = relative(p.metrics, reference.metrics, higher_is_better)
        rows.append([p.cost / reference.cost] + [-rel[t] for t in worst_relative])
    ref = np.array([worst_cost] + [-worst_relative[t] for t in worst_relative])
    inside = np.array([r for r in rows if np.all(np.asarray(r) < ref)])
    return float(compute_hypervolume(inside, ref)) if len(inside) else 0.0
