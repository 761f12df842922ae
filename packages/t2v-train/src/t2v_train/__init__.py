"""t2v_train: the trainer (single process and torchrun DDP, exact resume) and the prompt-adherence evaluation."""

from .config import EvalConfig, Experiment, TrainConfig, load_experiment
from .trainer import TrainingError, train

__all__ = ["EvalConfig", "Experiment", "TrainConfig", "TrainingError", "load_experiment", "train"]
