"""Importing the user's own code on purpose: `package.module:function` references (model and data factories,
task metrics), found in the current folder as `python -m` would, every failure one line naming the reference."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from edgemtl.errors import EdgemtlError


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def import_callable(reference: str, what: str) -> Callable[..., Any]:
    """The function `reference` names; `what` ("--model-factory", "the data factory") starts every error."""
    module_name, _, function_name = reference.partition(":")
    if not module_name or not function_name:
        raise EdgemtlError(f"{what} must look like package.module:function, got {reference!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` does: the user's own modules beside them, no PYTHONPATH needed
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except Exception as exc:  # an ImportError, or anything the user's module raises on import
        raise EdgemtlError(f"cannot import {what} {reference!r}: {_first_line(exc)}") from None
    if not callable(function):
        raise EdgemtlError(f"{what} {reference!r} is a {type(function).__name__}, not a function")
    return function


def call_user(function: Callable[..., Any], reference: str, what: str, *args: Any, **kwargs: Any) -> Any:
    """Call the user's function; an exception it raises becomes one line naming it (the user's bug, not ours)."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        raise EdgemtlError(f"{what} {reference!r} raised {_first_line(exc)}") from None
