"""What the toolchains kept in their own venvs (FINN, Deeploy) share when edgemtl runs their workers."""

from __future__ import annotations

import os
from pathlib import Path


def worker_env(**defaults: str) -> dict[str, str]:
    """This process's environment without the main venv's Python settings, one thread by default, quiet."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    for key, value in {"OMP_NUM_THREADS": "1", **defaults}.items():
        env.setdefault(key, value)
    env["PYTHONWARNINGS"] = "ignore"
    return env


def last_line(path: Path) -> str:
    """The last non-empty line of a worker's log: the one-line reason when it died without a result."""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
