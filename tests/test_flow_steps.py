"""Running steps: a long step reports progress to its bar, a step with nothing to do says so."""

from __future__ import annotations

from types import SimpleNamespace

from rich.console import Console

from edgemtl.flow import FlowContext, Skipped, run_steps
from edgemtl.flows.common import with_progress


def test_a_step_reports_progress_inside_and_is_silent_outside():
    seen = []

    def long_step(ctx):
        for task in with_progress(ctx, ["depth", "normals"], "QAT"):
            seen.append(task)

    def idle_step(ctx):
        return Skipped("nothing to do here")

    manifest: dict = {}
    context = FlowContext(loaded=None, target=None, options=None, bundle=None, manifest=manifest)
    reports = []
    real = FlowContext.progress
    run_steps([("long", long_step), ("idle", idle_step)], context, Console(file=open("/dev/null", "w")))
    assert seen == ["depth", "normals"] and context.progress is real  # reset after the steps
    assert [(s["name"], s["status"]) for s in manifest["steps"]] == [("long", "ok"), ("idle", "skipped")]
    assert manifest["steps"][1]["reason"] == "nothing to do here"
    fake = SimpleNamespace(progress=lambda done, total, what: reports.append((done, total, what)))
    assert list(with_progress(fake, [("scene", 1), ("depth", 2)], "C simulation")) == [("scene", 1), ("depth", 2)]
    assert reports == [(0, 2, "C simulation scene"), (1, 2, "C simulation depth"), (2, 2, "C simulation")]
