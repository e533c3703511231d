"""`edgemtl tune`: the width search's command line (the library is edgemtl.search; docs/tune.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgemtl.errors import EdgemtlError

if TYPE_CHECKING:
    from edgemtl.model.width_front import TuneFront

tune_app = typer.Typer()
out = Console() if Console().is_terminal else Console(width=400)
err = Console(stderr=True) if Console(stderr=True).is_terminal else Console(stderr=True, width=400)


@tune_app.command(name="tune")
def tune_command(
    model: Annotated[Path, typer.Argument(help="a slimmable edgemtl checkpoint (train --slimmable)")],
    target: Annotated[str, typer.Option(help="target whose cost is searched (see `edgemtl targets`)")] = "host",
    budget: Annotated[Optional[str], typer.Option(
        help="macs=FRACTION of the widest | latency_ms=X | memory_kib=X (the cost the search trades)")] = None,
    prefer: Annotated[Optional[str], typer.Option(help="task preference, e.g. depth=3,edges=1 (others 1)")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="the chosen width configuration (JSON); the front "
                                         "goes beside it as NAME.front.json")] = Path("widths.json"),
    storage: Annotated[Optional[str], typer.Option(
        help="optuna storage URL (sqlite:///f.db, postgresql://...); default: SQLite beside --output")] = None,
    study: Annotated[Optional[str], typer.Option(help="study name (default: derived from model, target and cost)")] = None,
    workers: Annotated[int, typer.Option(min=0, help="wait (up to 10 min) for this many --worker processes to "
                                         "attach before the first evaluation")] = 0,
    worker: Annotated[bool, typer.Option("--worker", help="evaluate the queued configurations of a study in "
                                         "--storage until its search finishes (run on each extra machine)")] = False,
    data: Annotated[Optional[str], typer.Option(help="held-out data: scenes | digits | FILE.npz | FOLDER | "
                                                "package.module:function (default: the model's built-in set)")] = None,
    resize: Annotated[bool, typer.Option("--resize", help="resize the data's images to the model's input")] = False,
    held_out: Annotated[int, typer.Option(min=8, help="validation samples each configuration is scored on")] = 256,
    initial: Annotated[int, typer.Option(min=2, help="random configurations evaluated first")] = 8,
    rounds: Annotated[int, typer.Option(min=0, help="LINAS rounds (predict, then evaluate the predicted front)")] = 7,
    per_round: Annotated[int, typer.Option(min=1, help="configurations evaluated per round")] = 4,
    device: Annotated[Optional[str], typer.Option(
        help="latency_ms budgets: time on this board, rpc://TRACKER:PORT/KEY (as `edgemtl profile --device`)")] = None,
    threads: Annotated[int, typer.Option(min=1, help="PyTorch and ONNX Runtime threads (per process)")] = 1,
    seed: int = 0,
    model_factory: Annotated[Optional[str], typer.Option(help="package.module:function returning the nn.Module")] = None,
    spec: Annotated[Optional[Path], typer.Option(help="YAML/TOML spec for non-zoo models")] = None,
    trust: Annotated[bool, typer.Option("--trust", help="allow unpickling a fully pickled module")] = False,
) -> None:
    """Search a slimmable model's width configurations for a target (LINAS: predictors + NSGA-II, real evaluations in
    an optuna study) and write the configuration that best serves the budget and task preference."""
    from edgemtl.model.checkpoint import load
    from edgemtl.search.linas import SearchSettings
    from edgemtl.search.objectives import Budget
    from edgemtl.search.tune import EvaluationSettings, TuneRequest, run_worker, tune, write_outputs
    from edgemtl.targets import load_target

    if worker:
        if storage is None:
            raise EdgemtlError("--worker needs the --storage URL of the searching process's study")
        loaded = load(model, factory=model_factory, spec_path=spec, trust=trust)
        with _progress() as bar:
            task = bar.add_task("worker: evaluated", total=None)
            count = run_worker(loaded, model, storage, study, on_done=lambda: bar.advance(task))
        out.print(f"worker done: {count} configuration(s) evaluated")
        return
    if budget is None:
        raise EdgemtlError("tune needs --budget macs=FRACTION, latency_ms=X or memory_kib=X")
    parsed = Budget.parse(budget)
    load_target(target)
    if output.suffix != ".json":
        raise EdgemtlError(f"--output {output} should be a .json file (the width configuration)")
    loaded = load(model, factory=model_factory, spec_path=spec, trust=trust)
    name = data or loaded.spec.data
    if name is None:
        raise EdgemtlError("this model does not say which data it was trained on: pass --data (see docs/own-model.md)")
    settings = EvaluationSettings(target=target, cost=parsed.kind, data=name, resize=resize, held_out=held_out,
                                  threads=threads, device=device)
    request = TuneRequest(parsed, prefer, storage, study,
                          SearchSettings(initial=initial, rounds=rounds, per_round=per_round, seed=seed), workers)
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        front = tune(loaded, model, settings, request, output, progress)
    config_path, front_file = write_outputs(front, output)
    out.print(_chosen_table(front))
    out.print(f"configuration: {config_path}")
    out.print(f"front: {front_file} ({front.study['real_evaluations']} evaluated, "
              f"{sum(p.source == 'predicted' for p in front.points)} predicted; study {front.study['name']} in "
              f"{front.study['storage']})")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=True)


def _chosen_table(front: TuneFront) -> Table:
    chosen = front.chosen
    table = Table(title=f"chosen for {front.cost.budget} on {front.target}: {front.cost.kind} "
                        f"{chosen.cost:.4g} {front.cost.unit} ({chosen.cost / front.reference.cost:.0%} of the widest; "
                        f"{chosen.provenance['cost'].text() if 'cost' in chosen.provenance else ''})")
    for column in ("task", "preference", "metric", "widest", "chosen", "relative", "decoder width"):
        table.add_column(column)
    for task, objective in front.tasks.items():
        table.add_row(task, f"{objective.preference:.2f}", objective.metric, f"{front.reference.metrics[task]:.4g}",
                      f"{chosen.metrics[task]:.4g}", f"{front.relative[task]:.3f}", f"{chosen.widths.decoders[task]:g}")
    table.caption = "encoder: " + ", ".join(f"{k} {v:g}" for k, v in chosen.widths.encoder.items())
    return table
