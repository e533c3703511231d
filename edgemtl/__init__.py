"""edgemtl: compile trained multi-task PyTorch models for edge hardware."""

__version__ = "0.1.0"
