"""t2v_train: the trainer (single process and torchrun DDP, exact resume) and evaluation."""

from .config import EvalConfig, Experiment, TrainConfig, load_experiment
from .trainer import train

__all__ = ["EvalConfig", "Experiment", "TrainConfig", "load_experiment", "train"]
