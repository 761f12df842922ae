"""The one error hierarchy of t2v. Every error a user can cause is a `T2VError` with a one-line message naming the
file, key or argument at fault, and carries the exit status the pipelines end with (README, "Exit status").

Torch-free, like `schema`, `files` and `cli`: the data stage imports these without loading torch.
"""

from __future__ import annotations


class T2VError(Exception):
    """Base class: a one-line message for the user; `exit_code` is what a pipeline exits with, `label` what its line
    starts with."""

    exit_code = 1
    label = "error"


class ConfigError(T2VError, ValueError):
    """A bad config file, key or value, or a bad argument or command-line flag; the message names it."""

    exit_code = 2
    label = "config error"


class DataError(T2VError):
    """Unusable input data: source videos and captions, shards and their manifests, the embedding cache."""


class CheckpointError(T2VError):
    """A missing, corrupt or mismatched checkpoint; the message names the file."""


class TextEncoderError(T2VError):
    """The text encoder could not be loaded or was used wrongly; the message names the encoder."""


class TrainingError(T2VError):
    """Training cannot start or go on (a non-finite loss, an incompatible checkpoint); says what is kept."""


class Stopped(T2VError):
    """A run stopped on request after saving its state (SIGTERM or SIGUSR1: a scheduler's preemption); the same
    command resumes. Exits 143, as a process ended by SIGTERM does."""

    exit_code = 143
    label = "stopped"


class Interrupted(Stopped):
    """Stopped by Ctrl-C after saving its state."""

    exit_code = 130
    label = "interrupted"
