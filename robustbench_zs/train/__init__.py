"""Training: the engine every method trains with, checkpoints, and data parallelism under torchrun."""

from .engine import TrainConfig, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
