"""Files edgemtl ships inside its package, so an install outside the checkout has them: the target files
(`targets/`, one TOML per board) and the board kits (`hw/`: block design, drivers, harnesses, board scripts).
In the checkout, the top-level `targets` and `hw` are links to these folders."""

from importlib.resources import files
from pathlib import Path

TARGETS_DIR = Path(str(files(__name__) / "targets"))
HW_DIR = Path(str(files(__name__) / "hw"))
