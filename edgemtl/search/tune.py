"""`edgemtl tune` as a library call: search a slimmable model's widths for a target, answer a budget and a preference.

`tune` runs the LINAS loop with its real evaluations in an optuna study, lets the controller pick the configuration
for the user's budget and preference, and returns everything as a `TuneFront` (written by `write_outputs` as a bare
width configuration plus `<name>.front.json` beside it). `work` is the `--worker` side: it attaches to the study and
evaluates queued configurations with the settings the searching process stored there.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgemtl.bundle import file_sha256
from edgemtl.data.sources import DEFAULT_HOLDOUT, open_data
from edgemtl.errors import EdgemtlError
from edgemtl.manifest import Provenance
from edgemtl.model.checkpoint import LoadedModel
from edgemtl.model.width_front import CostObjective, FrontPoint, TaskObjective, TuneFront, front_path
from edgemtl.model.widths import WidthConfig
from edgemtl.passes.slice_widths import RECALIBRATION_BATCH_SIZE, slimmable_space
from edgemtl.search.controller import Point, choose, focused_candidates, ranges_of, relative
from edgemtl.search.evaluate import ConfigEvaluator
from edgemtl.search.linas import SearchOutcome, SearchSettings, evaluated_points, linas, pareto
from edgemtl.search.objectives import Budget, CostMeter, parse_preference
from edgemtl.search.study import RealEvaluations, config_key, open_storage, redact, work
from edgemtl.targets import load_target
from edgemtl.timing import torch_threads

WORKERS_WAIT_S = 600.0  # how long a search waits for the workers it was told to expect
CONTROLLER_TRIES = 3    # predicted winners evaluated for real before the best real point is taken

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class EvaluationSettings:
    """How every process of one study evaluates a configuration (stored in the study for the workers)."""

    target: str
    cost: str                        # macs | latency_ms | memory_kib
    data: str
    resize: bool = False
    holdout: tuple[float, float] = DEFAULT_HOLDOUT
    held_out: int = 256              # validation samples each configuration is scored on
    recalibration_batches: int = 8   # training batches a configuration's BatchNorm statistics come from
    threads: int = 1                 # PyTorch and ONNX Runtime threads (more than free cores is many times slower)
    device: str | None = None        # rpc://TRACKER:PORT/KEY: latency measured on that board (profiler's RPC client)


@dataclass(frozen=True)
class TuneRequest:
    budget: Budget
    preference: str | None = None    # "taskA=3,taskB=1"
    storage: str | None = None       # optuna RDB URL; default: SQLite beside the output
    study: str | None = None
    search: SearchSettings = field(default_factory=SearchSettings)
    workers: int = 0                 # wait for this many `--worker` processes to attach before evaluating


def evaluator_for(loaded: LoadedModel, settings: EvaluationSettings) -> ConfigEvaluator:
    slimmable_space(loaded.spec, "tune")
    meter = CostMeter(settings.cost, load_target(settings.target), threads=settings.threads, device=settings.device)
    source = open_data(settings.data, loaded.spec, resize=settings.resize, holdout=settings.holdout)
    train = source.load("train", n=settings.recalibration_batches * RECALIBRATION_BATCH_SIZE).in_memory()
    held_out = source.load("val", n=settings.held_out).in_memory()   # read for every configuration: decode once
    return ConfigEvaluator(loaded.model, loaded.spec, train, held_out, meter, settings.recalibration_batches)


def default_storage(output: Path) -> str:
    return f"sqlite:///{output.with_name(output.stem + '.study.db').resolve()}"


def default_study(sha256: str, settings: EvaluationSettings) -> str:
    return f"edgemtl-{sha256[:12]}-{settings.target}-{settings.cost}"


def tune(loaded: LoadedModel, model_path: Path, settings: EvaluationSettings, request: TuneRequest, output: Path,
         progress: Progress | None = None) -> TuneFront:
    """Search, choose, and return the front (nothing written but the study: `write_outputs` writes the files)."""
    with torch_threads(settings.threads):
        started = time.perf_counter()
        evaluator = evaluator_for(loaded, settings)
        try:   # the cost meter may hold a board's RPC session
            return _tune(evaluator, model_path, settings, request, output, progress, started)
        finally:
            evaluator.meter.close()


def _tune(evaluator: ConfigEvaluator, model_path: Path, settings: EvaluationSettings, request: TuneRequest,
          output: Path, progress: Progress | None, started: float) -> TuneFront:
    space = evaluator.space
    preference = parse_preference(request.preference, evaluator.task_names)
    widest_cost, _ = evaluator.cost(space.widest())
    narrowest_cost, _ = evaluator.cost(space.narrowest())
    request.budget.check_reachable(narrowest_cost, widest_cost)
    limit = request.budget.limit(widest_cost)
    sha256 = file_sha256(model_path)
    if request.storage is None:
        output.parent.mkdir(parents=True, exist_ok=True)
    storage_url = request.storage or default_storage(output)
    name = request.study or default_study(sha256, settings)
    real = RealEvaluations.create(open_storage(storage_url), name, space, evaluator.task_names,
                                  evaluator.higher_is_better(),
                                  {"model_sha256": sha256, "tasks": evaluator.task_names, **_settings_dict(settings)})
    try:
        real.wait_for_workers(request.workers, WORKERS_WAIT_S)
        outcome = linas(space, real, evaluator, evaluator.higher_is_better(), request.search, progress)
        chosen = control(real, outcome, evaluator, limit, preference, progress)
    finally:
        real.finish()
    return _front(real, outcome, chosen, evaluator, request, settings, preference, limit, sha256, storage_url, name,
                  time.perf_counter() - started)


def control(real: RealEvaluations, outcome: SearchOutcome, evaluator: ConfigEvaluator, limit: float,
            preference: dict[str, float], progress: Progress | None) -> Point:
    """The controller's pick, evaluated for real and within the budget."""
    higher = evaluator.higher_is_better()
    space = evaluator.space
    for attempt in range(CONTROLLER_TRIES):
        evaluated = evaluated_points(real)
        reference = _widest(evaluated, space.widest()).metrics
        within = [p for p in evaluated if p.cost <= limit] or evaluated
        candidates = evaluated + outcome.predicted + focused_candidates(
            space, outcome.predictors, real.tasks, limit, preference, reference, higher,
            ranges_of(within, reference, higher), seed=attempt)
        seen = {config_key(p.widths) for p in evaluated}
        candidates = evaluated + [p for p in candidates[len(evaluated):] if config_key(p.widths) not in seen]
        pick = choose(candidates, limit, preference, reference, higher)
        if pick is None or pick.evaluated:
            break
        real.evaluate([pick.widths], evaluator, None if progress is None else
                      lambda done: progress("controller", done, 1))
    evaluated = evaluated_points(real)
    final = choose(evaluated, limit, preference, _widest(evaluated, space.widest()).metrics, higher,
                   evaluated_only=True)
    if final is None:   # only when even the narrowest configuration measured above the budget this time
        raise EdgemtlError(f"no evaluated configuration met the budget ({limit:.4g}); the narrowest measured "
                           f"{min(p.cost for p in evaluated):.4g}: raise the budget")
    return final


def _widest(points: list[Point], widest: WidthConfig) -> Point:
    return next(p for p in points if config_key(p.widths) == config_key(widest))


def _settings_dict(settings: EvaluationSettings) -> dict[str, Any]:
    values = asdict(settings)
    values["holdout"] = list(settings.holdout)
    return values


def _front(real: RealEvaluations, outcome: SearchOutcome, chosen: Point, evaluator: ConfigEvaluator, request: TuneRequest,
           settings: EvaluationSettings, preference: dict[str, float], limit: float, sha256: str, storage: str,
           name: str, seconds: float) -> TuneFront:
    higher = evaluator.higher_is_better()
    provenances = {config_key(w): p for w, _, p in real.completed()}
    evaluated = evaluated_points(real)
    on_front = {config_key(p.widths) for p in pareto(evaluated, higher)}
    on_predicted_front = {config_key(p.widths) for p in pareto(outcome.predicted, higher)}

    def point(p: Point) -> FrontPoint:
        key = config_key(p.widths)
        provenance = {k: Provenance.model_validate(v) for k, v in provenances.get(key, {}).items()} if p.evaluated \
            else {name: Provenance(kind="estimated", source="edgemtl tune predictor",
                                   detail=f"{outcome.predictors[key].kind} on the evaluated points, not evaluated")
                  for name, key in (("cost", "cost"), ("metrics", evaluator.task_names[0]))}
        return FrontPoint(widths=p.widths, cost=p.cost, metrics=p.metrics,
                          source="evaluated" if p.evaluated else "predicted",
                          pareto=key in (on_front if p.evaluated else on_predicted_front), provenance=provenance)

    widest = _widest(evaluated, evaluator.space.widest())
    unit = evaluator.meter.unit
    return TuneFront(
        model_sha256=sha256, target=settings.target,
        cost=CostObjective(kind=settings.cost, unit=unit, limit=limit,
                           budget=f"{request.budget.kind}={request.budget.value:g}"),
        tasks={t.name: TaskObjective(metric=t.metric, higher_is_better=higher[t.name], preference=preference[t.name])
               for t in evaluator.tasks},
        reference=point(widest), points=[point(p) for p in evaluated + outcome.predicted], chosen=point(chosen),
        relative=relative(chosen.metrics, widest.metrics, higher),
        predictors={k: v.summary() for k, v in outcome.predictors.items()},
        study={"storage": redact(storage), "name": name, "real_evaluations": len(evaluated)},
        seconds=seconds)


def write_outputs(front: TuneFront, output: Path) -> tuple[Path, Path]:
    """The chosen configuration (bare, what `compile --widths` reads) and the front beside it, each moved into place
    whole."""
    output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in ((output, front.chosen.widths.to_json()), (front_path(output), front.model_dump_json(indent=2) + "\n")):
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False,
                                         encoding="utf-8") as handle:
            handle.write(text)
        os.replace(handle.name, path)
        written.append(path)
    return written[0], written[1]


def run_worker(loaded: LoadedModel, model_path: Path, storage: str, study: str | None, wait_s: float = 120.0,
               on_done: Callable[[], None] | None = None) -> int:
    """Attach to a study (by default the newest unfinished one of this checkpoint in the storage) and evaluate its
    queued configurations until the search finishes; returns how many it evaluated."""
    space = slimmable_space(loaded.spec, "tune --worker")
    sha256 = file_sha256(model_path)
    real = RealEvaluations.attach(open_storage(storage), study, space, wait_s, sha256)
    stored = real.settings
    if stored["model_sha256"] != sha256:
        raise EdgemtlError(f"study {study!r} searches another model (sha256 {stored['model_sha256'][:12]}...): give "
                           "every worker the same checkpoint file")
    fields = {k: stored[k] for k in EvaluationSettings.__dataclass_fields__}
    fields["holdout"] = tuple(fields["holdout"])
    settings = EvaluationSettings(**fields)
    with torch_threads(settings.threads):
        evaluator = evaluator_for(loaded, settings)
        real.register_worker()
        try:
            return work(real, evaluator, on_done)
        finally:
            evaluator.meter.close()
