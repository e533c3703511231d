"""edgemtl: compile trained multi-task PyTorch models for edge hardware.

`edgemtl.load(path)` and `edgemtl.save(model, spec, path)` read and write checkpoints; see
`edgemtl.model.checkpoint` for the format.
"""

from edgemtl.model.checkpoint import LoadedModel, load, save
from edgemtl.model.spec import InputSpec, ModelSpec, TaskSpec

__version__ = "0.1.0"
__all__ = ["InputSpec", "LoadedModel", "ModelSpec", "TaskSpec", "__version__", "load", "save"]
