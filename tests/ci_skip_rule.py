"""The CI rule: with CI=true a skipped test or module is a failed one, naming why it skipped. .ci/run installs every
tool the suite needs, so a skip there means a broken set-up, and it must make the run red, never quietly green."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """CI sets CI=true; there every tool the suite needs is installed by .ci/run, so a skip means a broken set-up."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip into a failure that names the reason: a missing tool must make CI red, never quietly green."""
    if not (in_ci() and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped in CI ({reason.removeprefix('Skipped: ')}): a CI run must run every check; "
                       ".ci/run installs every tool the suite needs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ARG001
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # noqa: ARG001
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())
