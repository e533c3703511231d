"""Controllable compute budget and task preference, measured as the issue asks (docs/tune.md).

One run, on the default mtl-cnn (width 16) made slimmable and trained on `scenes`:
1. Slimmable quality: the slimmable model at its widest and narrowest configuration against fixed-width models of
   the same widths trained for the same steps (relative degradation per task, each metric its own way). Paired by
   seed (one initial model and one batch order for the slimmable and the fixed-width models) and averaged over
   `--seeds`: at 400 steps, fixed-width models of different seeds alone differed by 5-10% on segmentation, normals and
   scene (docs/tune.md), more than the 2% the target resolves. The fixed-width models' own spread across seeds is
   recorded beside it. Seeds train in parallel worker processes, one thread each.
2. Search efficiency: LINAS (predictors + NSGA-II inner loop) against plain NSGA-II with every configuration
   evaluated for real; hypervolume in (MACs / widest, each task's performance relative to the widest) as real
   evaluations accumulate; how many real evaluations LINAS needs to reach plain NSGA-II's final hypervolume.
3. Controllability: for budgets 0.3-0.9 of the widest MACs and preference vectors (each task preferred 4:1, and
   random ones), the controller's configuration (evaluated for real) against shrinking every width uniformly to the
   same budget: Spearman rank correlation between the preference and the realised relative performance, and
   whether the preferred task does better than under uniform shrink.
4. `edgemtl tune` wall time on this model with the command's defaults (one target, host).

    .venv/bin/python benchmarks/controllable.py [--steps 1200] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import torch
from common import met, start_run, write_results
from scipy.stats import spearmanr

from edgemtl.data import data_spec, load_data
from edgemtl.evaluate import evaluate, torch_predictor
from edgemtl.model.checkpoint import save
from edgemtl.model.width_affine import set_width_affines, width_affines
from edgemtl.model.width_masks import WidthMasks
from edgemtl.model.widths import WidthConfig
from edgemtl.model.zoo import build_model, slimmable_spec, zoo_spec
from edgemtl.passes.slice_widths import slice_model
from edgemtl.search.controller import relative
from edgemtl.search.evaluate import ConfigEvaluator
from edgemtl.search.linas import SearchSettings, evaluated_points, hypervolume, linas, nsga2_real, pareto
from edgemtl.search.objectives import CostMeter
from edgemtl.search.study import RealEvaluations, config_key
from edgemtl.search.tune import control
from edgemtl.targets import load_target
from edgemtl.training import TrainConfig, train
from edgemtl.training.slimmable import SlimmableConfig, configured, train_slimmable

RESULTS = Path(__file__).parent / "results" / "controllable.json"
BUDGETS = (0.3, 0.5, 0.7, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the slimmable-vs-fixed comparison (the first one's "
                        "slimmable model is searched)")
    parser.add_argument("--workers", type=int, default=2, help="processes training seeds in parallel")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-samples", type=int, default=2048)
    parser.add_argument("--val-samples", type=int, default=256)
    parser.add_argument("--initial", type=int, default=SearchSettings().initial)
    parser.add_argument("--rounds", type=int, default=SearchSettings().rounds)
    parser.add_argument("--per-round", type=int, default=SearchSettings().per_round)
    parser.add_argument("--random-preferences", type=int, default=3)
    parser.add_argument("--distill-weight", type=float, default=SlimmableConfig().distill_weight)
    parser.add_argument("--ablate", default="affine=off", help="slimmable variants to compare on the first seed, comma-separated: "
                        "distill=W (another feature distillation weight), affine=off (no private affines)")
    parser.add_argument("--skip-tune-timing", action="store_true")
    args = parser.parse_args()
    run = start_run()
    torch.set_num_threads(1)   # on a shared machine, more threads than free cores is many times slower
    spec, train_set, val_set = _setting(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [("slimmable", seed, SlimmableConfig(distill_weight=args.distill_weight)) for seed in seeds]
    variants += [(name, seeds[0], slim) for name, slim in _ablations(args)]
    with concurrent.futures.ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(_seed_run, [args] * len(variants), [seed for _, seed, _ in variants],
                             [slim for _, _, slim in variants]))
    per_seed = {str(seed): run_ for (name, seed, _), run_ in zip(variants, runs) if name == "slimmable"}
    ablation = {name: run_["quality"] for (name, _, _), run_ in zip(variants, runs) if name != "slimmable"}
    quality = mean_quality([r["quality"] for r in per_seed.values()])
    spread = fixed_spread([r["fixed"] for r in per_seed.values()], spec)
    first = per_seed[str(seeds[0])]
    model = build_model(spec)
    model.load_state_dict(first["state_dict"])
    set_width_affines(model, first["affines"])
    slimmable_seconds = first["seconds"]
    for seed, run_ in per_seed.items():
        print(f"seed {seed}:")
        print_quality(run_["quality"])
    print(f"mean over seeds {args.seeds}:")
    print_quality(quality)
    for name, rows in ablation.items():
        print(f"{name} (seed {seeds[0]}):")
        print_quality(rows)

    evaluator = ConfigEvaluator(model, spec, train_set, val_set, CostMeter("macs", load_target("host")))
    higher = evaluator.higher_is_better()
    settings = SearchSettings(initial=args.initial, rounds=args.rounds, per_round=args.per_round)
    real = RealEvaluations.create(optuna.storages.InMemoryStorage(), "benchmark", evaluator.space,
                                  evaluator.task_names, higher, {"model_sha256": "benchmark", "tasks": evaluator.task_names,
                                                                 "cost": "macs"})
    started = time.perf_counter()
    outcome = linas(evaluator.space, real, evaluator, higher, settings)
    linas_seconds = time.perf_counter() - started
    linas_points = evaluated_points(real)          # in evaluation order (trial number)
    started = time.perf_counter()
    nsga_trials = 2 * settings.real_evaluations(evaluator.space)
    nsga_points = nsga2_real(evaluator.space, _cached(evaluator), evaluator.task_names, higher, trials=nsga_trials,
                             population=settings.initial + 4)
    nsga_seconds = time.perf_counter() - started
    efficiency = search_efficiency(linas_points, nsga_points, higher)
    efficiency.update(linas_seconds=round(linas_seconds, 1), nsga_seconds=round(nsga_seconds, 1),
                      predictors={k: v.summary() for k, v in outcome.predictors.items()})
    print(f"LINAS reaches plain NSGA-II's hypervolume ({efficiency['nsga_final_hv']:.4g} after "
          f"{efficiency['nsga_unique_evaluations']} real evaluations) after {efficiency['linas_evaluations_to_match']} "
          f"(ratio {efficiency['ratio']})")

    controllability = measure_controllability(real, outcome, evaluator, args.random_preferences)
    rho = controllability["mean_spearman"]
    print(f"controllability (mean Spearman, normalised): controller {rho['controller']:.3f}, uniform shrink "
          f"{rho['uniform']:.3f} (raw: {rho['controller_raw']:.3f} vs {rho['uniform_raw']:.3f}); preferred task "
          "better than uniform in "
          f"{controllability['preferred_better']}/{controllability['preferred_cases']}")

    timing = None if args.skip_tune_timing else tune_timing(model, spec)
    targets = {
        "controllability above uniform shrink": controllability["mean_spearman"]["controller"]
        > controllability["mean_spearman"]["uniform"],
        "preferred task better than uniform at every budget": controllability["preferred_better"]
        == controllability["preferred_cases"],
        "slimmable within 2% of fixed-width (widest, narrowest)": all(
            abs(row["degradation"]) <= 0.02 or row["degradation"] < 0 for c in quality.values() for row in c.values()),
        "LINAS matches NSGA-II with at most half the real evaluations": efficiency["ratio"] is not None
        and efficiency["ratio"] <= 0.5,
        "tune under 10 minutes": None if timing is None else timing["macs"]["seconds"] < 600,
    }
    for name, verdict in met(targets).items():
        print(f"{verdict:>12}  {name}")
    write_results(RESULTS, {"args": vars(args), "model": {"arch": "mtl-cnn", "config": "default (width 16)",
                                                          "space_size": spec.widths.size()},
                            "slimmable_train_seconds": round(slimmable_seconds, 1), "slimmable_quality": quality,
                            "slimmable_quality_per_seed": {seed: r["quality"] for seed, r in per_seed.items()},
                            "fixed_width_spread_across_seeds": spread, "slimmable_quality_ablation": ablation,
                            "search_efficiency": efficiency, "controllability": controllability,
                            "tune_timing": timing, "targets": met(targets)}, run)
    print(RESULTS)


def _setting(args):
    input_spec, tasks = data_spec("scenes")
    spec = slimmable_spec(zoo_spec("mtl-cnn", input_spec, tasks, {}, data="scenes"))
    train_set = load_data("scenes", "train", n=args.train_samples, seed=0).in_memory()
    val_set = load_data("scenes", "val", n=args.val_samples).in_memory()
    return spec, train_set, val_set


def _ablations(args) -> list[tuple[str, SlimmableConfig]]:
    out = []
    for item in filter(None, (part.strip() for part in args.ablate.split(","))):
        key, _, value = item.partition("=")
        if key == "distill":
            out.append((f"distill weight {float(value):g}", SlimmableConfig(distill_weight=float(value))))
        elif item == "affine=off":
            out.append(("no private affines", SlimmableConfig(distill_weight=args.distill_weight, private_affine=False)))
        else:
            raise SystemExit(f"unknown --ablate item {item!r}: distill=W or affine=off")
    return out


def _seed_run(args, seed: int, slim: SlimmableConfig) -> dict:
    """One seed (a worker process): fixed-width models and the slimmable model from the same initial weights and the
    same batch order, and the slimmable one's quality against them."""
    torch.set_num_threads(1)
    spec, train_set, val_set = _setting(args)
    steps = TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=seed)
    torch.manual_seed(seed)
    initial = build_model(spec).state_dict()
    fixed = fixed_width_metrics(spec, initial, train_set, val_set, steps)
    model = build_model(spec)
    model.load_state_dict(initial)
    masks = WidthMasks(model, spec)
    started = time.perf_counter()
    train_slimmable(model, spec, train_set, steps, slim, show_progress=False, masks=masks)
    seconds = time.perf_counter() - started
    quality = slimmable_quality(model, spec, masks, fixed, train_set, val_set)
    return {"quality": quality, "fixed": fixed, "seconds": round(seconds, 1), "state_dict": model.state_dict(),
            "affines": width_affines(model)}


def mean_quality(runs: list[dict]) -> dict:
    """Per configuration and task: the mean of each seed's slimmable and fixed metric, and the mean degradation."""
    out = {}
    for label, rows in runs[0].items():
        out[label] = {task: {"metric": row["metric"], **{key: float(np.mean([r[label][task][key] for r in runs]))
                                                       for key in ("slimmable", "fixed", "degradation")}}
                      for task, row in rows.items()}
    return out


def fixed_spread(fixed: list[dict], spec) -> dict:
    """How far apart the fixed-width models of different seeds are, per configuration and task: (max - min) / mean of
    the metric, the noise the slimmable comparison sits in."""
    return {label: {task.name: float((max(values) - min(values)) / abs(np.mean(values)))
                    for task in spec.tasks
                    for values in [[f[label][task.name][task.metric] for f in fixed]]}
            for label in fixed[0]}


def fixed_width_metrics(spec, initial, train_set, val_set, steps) -> dict:
    """Fixed-width models at the widest and the narrowest widths: the same initial weights, sliced, trained alone
    for the same steps."""
    out = {}
    for label, widths in (("widest", spec.widths.widest()), ("narrowest", spec.widths.narrowest())):
        fixed_model = build_model(spec)
        fixed_model.load_state_dict(initial)
        fixed_model, fixed_spec = slice_model(fixed_model, spec, widths)
        train(fixed_model, fixed_spec, train_set, steps, show_progress=False)
        out[label] = evaluate(torch_predictor(fixed_model), fixed_spec.tasks, val_set)
    return out


def slimmable_quality(model, spec, masks, fixed, train_set, val_set) -> dict:
    """Each task's metric at the widest / narrowest configuration, slimmable vs fixed-width: degradation > 0 means
    the slimmable one is worse."""
    out = {}
    for label, widths in (("widest", spec.widths.widest()), ("narrowest", spec.widths.narrowest())):
        with configured(model, masks, widths, train_set):
            slim = evaluate(torch_predictor(model), spec.tasks, val_set)
        rows = {}
        for task in spec.tasks:
            s, f = slim[task.name][task.metric], fixed[label][task.name][task.metric]
            degradation = (f - s) / abs(f) if task.higher_is_better else (s - f) / abs(f)
            rows[task.name] = {"metric": task.metric, "slimmable": s, "fixed": f, "degradation": degradation}
        out[label] = rows
    return out


def print_quality(quality: dict) -> None:
    print(f"{'config':10} {'task':13} {'metric':14} {'slimmable':>10} {'fixed':>10} {'degradation':>12}")
    for label, rows in quality.items():
        for task, row in rows.items():
            print(f"{label:10} {task:13} {row['metric']:14} {row['slimmable']:10.4f} {row['fixed']:10.4f} "
                  f"{row['degradation']:+12.1%}")


def _cached(evaluator):
    """Plain NSGA-II re-proposes configurations it has seen; a real run would evaluate them again, here they are
    looked up (and counted once: the comparison then favours the baseline)."""
    cache = {}

    def evaluate_once(widths: WidthConfig):
        key = config_key(widths)
        if key not in cache:
            cache[key] = evaluator(widths)
        return cache[key]

    return evaluate_once


def search_efficiency(linas_points, nsga_points, higher) -> dict:
    unique, seen = [], set()
    for p in nsga_points:
        if config_key(p.widths) not in seen:
            seen.add(config_key(p.widths))
            unique.append(p)
    reference = next(p for p in linas_points if p.widths == _widest(linas_points))
    everything = linas_points + unique
    worst = {t: min(relative(p.metrics, reference.metrics, higher)[t] for p in everything) - 1e-3 for t in higher}
    bounds = (1.0 + 1e-3, worst)

    def curve(points):
        return [hypervolume(pareto(points[:k], higher), reference, higher, bounds) for k in range(1, len(points) + 1)]

    linas_curve, nsga_curve = curve(linas_points), curve(unique)
    target = nsga_curve[-1]
    reached = next((k + 1 for k, hv in enumerate(linas_curve) if hv >= target), None)
    return {"linas_evaluations": len(linas_points), "nsga_unique_evaluations": len(unique),
            "nsga_trials": len(nsga_points), "nsga_final_hv": target, "linas_final_hv": linas_curve[-1],
            "linas_evaluations_to_match": reached,
            "ratio": None if reached is None else round(reached / len(unique), 3),
            "linas_hv_curve": linas_curve, "nsga_hv_curve": nsga_curve,
            "hypervolume_space": "MACs / widest (<= 1), each task's performance relative to the widest "
                                 "(down to the worst seen)"}


def _widest(points):
    return max(points, key=lambda p: p.cost).widths


def measure_controllability(real, outcome, evaluator, random_preferences: int) -> dict:
    """The controller's pick and the uniform shrink per budget and preference, both evaluated for real.

    Two rank correlations per (budget, preference), averaged: Spearman between the preference vector and
    - `normalised` (the measure the floor reads): each task's performance as a share of what that task reaches
      among all evaluated configurations within the budget (0 = its worst there, 1 = its best). Relative to the
      widest alone, the ordering of tasks is set by how sensitive each task is to width (normals always loses most)
      whatever the preference; within the budget's own range it says whether the preferred task got its share.
    - `raw`: each task's performance relative to the widest."""
    tasks, higher, space = evaluator.task_names, evaluator.higher_is_better(), evaluator.space
    widest = evaluator(space.widest())
    preferences = [{t: (4.0 if t == chosen else 1.0) for t in tasks} for chosen in tasks]
    rng = np.random.default_rng(0)
    preferences += [dict(zip(tasks, rng.dirichlet(np.ones(len(tasks))))) for _ in range(random_preferences)]
    picks = []
    for budget in BUDGETS:
        limit = budget * widest.cost
        uniform = uniform_shrink(evaluator, limit)
        for preference in preferences:
            total = sum(preference.values())
            weights = {t: w / total for t, w in preference.items()}
            picks.append((budget, preference, weights, control(real, outcome, evaluator, limit, weights, None), uniform))
    evaluated = evaluated_points(real)
    rows, spearman = [], {"controller": [], "uniform": [], "controller_raw": [], "uniform_raw": []}
    preferred_better = preferred_cases = 0
    for budget, preference, weights, pick, uniform in picks:
        within = [relative(p.metrics, widest.metrics, higher) for p in evaluated if p.cost <= budget * widest.cost]
        low = {t: min(r[t] for r in within) for t in tasks}
        span = {t: max(r[t] for r in within) - low[t] for t in tasks}
        vector = [weights[t] for t in tasks]
        row = {"budget": budget, "preference": weights}
        for label, point in (("controller", pick), ("uniform", uniform)):
            rel = relative(point.metrics, widest.metrics, higher)
            share = {t: (rel[t] - low[t]) / span[t] if span[t] > 0 else 1.0 for t in tasks}
            rho = float(np.nan_to_num(spearmanr(vector, [share[t] for t in tasks]).statistic))
            rho_raw = float(np.nan_to_num(spearmanr(vector, [rel[t] for t in tasks]).statistic))
            spearman[label].append(rho)
            spearman[f"{label}_raw"].append(rho_raw)
            row[label] = {"widths": point.widths.model_dump(), "macs_fraction": point.cost / widest.cost,
                          "relative": rel, "share_of_budget_range": share, "spearman": rho, "spearman_raw": rho_raw}
        one_hot = max(preference.values()) == 4.0 and sorted(preference.values())[-2] == 1.0
        favourite = max(weights, key=weights.get)
        better = row["controller"]["relative"][favourite] >= row["uniform"]["relative"][favourite] if one_hot else None
        if one_hot:
            preferred_cases += 1
            preferred_better += bool(better)
        rows.append({**row, "preferred_task": favourite if one_hot else None, "preferred_better_than_uniform": better})
        print(f"budget {budget:.1f} prefer {favourite:13} controller rho {row['controller']['spearman']:+.2f} "
              f"(r={row['controller']['relative'][favourite]:.3f}, {row['controller']['macs_fraction']:.2f} MACs) "
              f"uniform rho {row['uniform']['spearman']:+.2f} (r={row['uniform']['relative'][favourite]:.3f}, "
              f"{row['uniform']['macs_fraction']:.2f} MACs)")
    return {"budgets": list(BUDGETS), "rows": rows,
            "mean_spearman": {k: float(np.mean(v)) for k, v in spearman.items()},
            "preferred_better": preferred_better, "preferred_cases": preferred_cases,
            "measure": "Spearman(preference vector, each task's performance as a share of its range among the "
                       "evaluated configurations within the budget), per budget and preference, averaged; _raw: the "
                       "same against performance relative to the widest; uniform = every stage and decoder at the "
                       "largest common multiplier within the budget"}


def uniform_shrink(evaluator, limit: float):
    space = evaluator.space
    groups = [o for o in (*space.stages.values(), *space.decoders.values()) if len(o.multipliers) > 1]
    common = sorted(set.intersection(*(set(o.multipliers) for o in groups)), reverse=True)
    for multiplier in common:
        widths = WidthConfig(encoder={n: multiplier for n in space.stages},
                             decoders={n: (multiplier if len(o.multipliers) > 1 else 1.0)
                                       for n, o in space.decoders.items()})
        cost, _ = evaluator.cost(widths)
        if cost <= limit:
            return evaluator(widths)
    return evaluator(space.narrowest())


def tune_timing(model, spec) -> dict:
    """`edgemtl tune` with its defaults, wall time, one target (host): a MACs budget, and a latency budget (measured
    with ONNX Runtime) halfway between the narrowest and the widest configuration's latency."""
    meter = CostMeter("latency_ms", load_target("host"))
    narrowest, _ = meter(*slice_model(model, spec, spec.widths.narrowest()))
    widest, _ = meter(*slice_model(model, spec, spec.widths.widest()))
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = save(model, spec, Path(folder) / "slim.pt")
        for kind, budget in (("macs", "macs=0.5"), ("latency_ms", f"latency_ms={(narrowest + widest) / 2:.3f}")):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "edgemtl", "tune", str(checkpoint), "--budget", budget,
                                   "-o", str(Path(folder) / f"{kind}.json")], capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if done.returncode != 0:
                raise SystemExit(f"tune failed: {done.stderr}")
            out[kind] = {"budget": budget, "seconds": round(seconds, 1), "command": f"edgemtl tune MODEL --budget "
                         f"{budget} -o OUT (its defaults)"}
            print(f"tune --budget {budget}: {seconds:.0f} s")
    return out


if __name__ == "__main__":
    main()
