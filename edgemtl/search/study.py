"""The real evaluations of a search live in an optuna study: SQLite by default, any optuna RDB URL to share one.

Every configuration evaluated for real is one trial whose parameters are its multipliers (`encoder.<stage>`,
`decoder.<task>`) and whose values are the cost and each task's metric. The search never lets optuna sample a real
trial: it enqueues the configurations it wants (`enqueue`), and every process attached to the study, the one that
searches and any `edgemtl tune --worker`, claims waiting trials one at a time (optuna's own atomic WAITING ->
RUNNING update, so two processes never evaluate the same trial) and tells their values. Completed trials are reused:
a search restarted on the same storage evaluates nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from edgemtl.errors import EdgemtlError, first_line
from edgemtl.model.widths import WidthConfig, WidthSpace
from edgemtl.search.evaluate import Evaluation

FINISHED_ATTR = "edgemtl_finished"      # set when the searching process is done: workers stop
SETTINGS_ATTR = "edgemtl_settings"      # what a worker needs to evaluate as the searcher does
WORKER_PREFIX = "edgemtl_worker:"       # one user attribute per attached worker (host:pid -> when)

optuna.logging.set_verbosity(optuna.logging.WARNING)


def param_names(space: WidthSpace) -> dict[str, tuple[float, ...]]:
    """Trial parameter -> its choices, stages then decoders."""
    return {**{f"encoder.{name}": o.multipliers for name, o in space.stages.items()},
            **{f"decoder.{name}": o.multipliers for name, o in space.decoders.items()}}


def to_params(widths: WidthConfig) -> dict[str, float]:
    return {**{f"encoder.{k}": v for k, v in widths.encoder.items()},
            **{f"decoder.{k}": v for k, v in widths.decoders.items()}}


def from_params(params: dict[str, Any]) -> WidthConfig:
    return WidthConfig(encoder={k.split(".", 1)[1]: float(v) for k, v in params.items() if k.startswith("encoder.")},
                       decoders={k.split(".", 1)[1]: float(v) for k, v in params.items() if k.startswith("decoder.")})


def config_key(widths: WidthConfig) -> tuple[float, ...]:
    return tuple(sorted(to_params(widths).items()))  # type: ignore[arg-type]


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An optuna RDB storage, with one line when it cannot be opened (bad URL, missing driver, unreachable server)."""
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite")
                                          else {"connect_args": {"timeout": 60}})
    except Exception as exc:  # noqa: BLE001 - sqlalchemy and the drivers raise many kinds; all mean "cannot open"
        raise EdgemtlError(f"cannot open the study storage {redact(url)}: {first_line(exc)}") from None


def redact(url: str) -> str:
    """The storage URL without a password, for records and messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{rest.split('@', 1)[1]}"
    return url


@dataclass
class RealEvaluations:
    """One study of real evaluations; `directions` are the cost's then each task's."""

    study: optuna.Study
    space: WidthSpace
    tasks: list[str]

    @classmethod
    def create(cls, storage: optuna.storages.BaseStorage, name: str, space: WidthSpace, tasks: list[str],
               higher_is_better: dict[str, bool], settings: dict[str, Any]) -> RealEvaluations:
        directions = ["minimize"] + ["maximize" if higher_is_better[t] else "minimize" for t in tasks]
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
        known = study.user_attrs.get(SETTINGS_ATTR)
        if known is not None and known["model_sha256"] != settings["model_sha256"]:
            raise EdgemtlError(f"study {name!r} in this storage belongs to another model (sha256 "
                               f"{known['model_sha256'][:12]}...): name another with --study")
        if known is not None and (known["cost"] != settings["cost"] or known["tasks"] != settings["tasks"]):
            raise EdgemtlError(f"study {name!r} searched {known['cost']} for tasks {', '.join(known['tasks'])}: "
                               "name another with --study")
        study.set_user_attr(SETTINGS_ATTR, settings)
        study.set_user_attr(FINISHED_ATTR, False)
        return cls(study, space, tasks)

    @classmethod
    def attach(cls, storage: optuna.storages.BaseStorage, name: str | None, space: WidthSpace, wait_s: float,
               sha256: str) -> RealEvaluations:
        """A worker joins study `name`, or else the newest unfinished study of the checkpoint with `sha256`, waiting
        up to `wait_s` for the searching process to create it."""
        deadline = time.monotonic() + wait_s
        while True:
            for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s._study_id, reverse=True):
                attrs = summary.user_attrs
                if SETTINGS_ATTR not in attrs or (name is not None and summary.study_name != name):
                    continue
                if name is not None or (attrs[SETTINGS_ATTR]["model_sha256"] == sha256 and not attrs.get(FINISHED_ATTR)):
                    study = optuna.load_study(study_name=summary.study_name, storage=storage)
                    return cls(study, space, list(attrs[SETTINGS_ATTR]["tasks"]))
            if time.monotonic() > deadline:
                wanted = f"study {name!r}" if name else "an unfinished study of this checkpoint"
                raise EdgemtlError(f"no {wanted} in this storage after {wait_s:g} s: start `edgemtl tune` (without "
                                   "--worker) on the same storage first")
            time.sleep(1.0)

    def register_worker(self) -> None:
        """Say this process is ready to evaluate (after loading its model and data: a searcher waiting for workers
        must not start before they can take a configuration)."""
        self.study.set_user_attr(f"{WORKER_PREFIX}{socket.gethostname()}:{os.getpid()}", time.time())

    def wait_for_workers(self, count: int, wait_s: float) -> None:
        """Block until `count` workers have attached (each registers itself), so a search started with them shares
        its first evaluations; a one-line error after `wait_s`."""
        deadline = time.monotonic() + wait_s
        while sum(key.startswith(WORKER_PREFIX) for key in self.study.user_attrs) < count:
            if time.monotonic() > deadline:
                raise EdgemtlError(f"{count} worker(s) did not attach to study {self.study.study_name!r} within "
                                   f"{wait_s:g} s: start `edgemtl tune MODEL --storage URL --worker` on each")
            time.sleep(0.5)

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.study.user_attrs[SETTINGS_ATTR])

    def completed(self) -> list[tuple[WidthConfig, list[float], dict[str, Any]]]:
        """Every real evaluation so far: configuration, values (cost first), provenance."""
        return [(from_params(t.params), list(t.values), t.user_attrs.get("provenance", {}))
                for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]

    def enqueue(self, configs: list[WidthConfig]) -> set[tuple]:
        """Queue configurations not evaluated or queued yet; returns the keys of everything asked for."""
        queued = {config_key(from_params(t.system_attrs.get("fixed_params", t.params)))
                  for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING,
                                                                          TrialState.RUNNING))}
        for config in configs:
            if config_key(config) not in queued:
                self.study.enqueue_trial(to_params(config))
                queued.add(config_key(config))
        return {config_key(c) for c in configs}

    def claim(self) -> optuna.Trial | None:
        """A waiting trial, now RUNNING for this process only; None when the queue is empty."""
        storage = self.study._storage   # optuna's Study.ask claims queued trials through the storage the same way
        for trial in storage.get_all_trials(self.study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
            try:
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                    return optuna.Trial(self.study, trial._trial_id)
            except UpdateFinishedTrialError:
                continue
        return None

    def run_one(self, trial: optuna.Trial, evaluate: Callable[[WidthConfig], Evaluation]) -> bool:
        """Evaluate a claimed trial and tell it; False when another process finished it first (SQLite has no row
        locks, so two processes can now and then claim the same waiting trial: the second result is dropped)."""
        try:
            widths = WidthConfig.model_validate(from_params(
                {name: trial.suggest_categorical(name, list(c)) for name, c in param_names(self.space).items()}))
        except UpdateFinishedTrialError:
            return False
        try:
            result = evaluate(widths)
        except BaseException:
            with contextlib.suppress(UpdateFinishedTrialError):
                self.study.tell(trial, state=TrialState.FAIL)
            raise
        try:
            trial.set_user_attr("provenance", result.provenance)
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            self.study.tell(trial, [result.cost] + [result.metrics[t] for t in self.tasks])
        except UpdateFinishedTrialError:
            return False
        return True

    def evaluate(self, configs: list[WidthConfig], evaluate: Callable[[WidthConfig], Evaluation],
                 progress: Callable[[int], None] | None = None, poll_s: float = 0.5) -> None:
        """Queue `configs` and work on the queue (beside any workers) until every one of them is complete."""
        wanted = self.enqueue(configs)
        while True:
            done = {config_key(c) for c, _, _ in self.completed()}
            if progress is not None:
                progress(len(wanted & done))
            if wanted <= done:
                return
            trial = self.claim()
            if trial is not None:
                self.run_one(trial, evaluate)
            else:                                   # the rest is running on workers
                time.sleep(poll_s)

    def finish(self) -> None:
        self.study.set_user_attr(FINISHED_ATTR, True)

    def finished(self) -> bool:
        return bool(self.study.user_attrs.get(FINISHED_ATTR))   # read from the storage each time


def work(evaluations: RealEvaluations, evaluate: Callable[[WidthConfig], Evaluation],
         on_done: Callable[[], None] | None = None, poll_s: float = 0.5) -> int:
    """A worker's loop: evaluate queued configurations until the searcher marks the study finished."""
    count = 0
    while True:
        trial = evaluations.claim()
        if trial is not None:
            if evaluations.run_one(trial, evaluate):
                count += 1
                if on_done is not None:
                    on_done()
        elif evaluations.finished():
            return count
        else:
            time.sleep(poll_s)
