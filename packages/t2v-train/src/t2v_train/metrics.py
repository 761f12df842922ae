"""Where a run's numbers go: `metrics.jsonl` (one JSON object per line, always), and the trackers `train.loggers`
names: TensorBoard (`uv sync --extra tensorboard`) and Weights & Biases (`uv sync --extra wandb`; offline with
WANDB_MODE=offline). Every row (loss, lr, throughput, val loss, preview scores) goes to each; the preview grids too.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from t2v_model.errors import ConfigError
from t2v_model.files import write_bytes_atomic

LOGGERS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger -> the extra that installs it
WANDB_RUN_ID = "wandb-run-id"  # in out_dir: a resumed run continues the same W&B run


def check_loggers(loggers: list[str]) -> None:
    """ConfigError for a tracker that is not installed, before any training (they are optional extras)."""
    for name in loggers:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(f"train.loggers: {name} is not installed; `uv sync --extra {LOGGERS[name]}` adds it")


class MetricsLog:
    """Rank 0 only. On (re)start, rows after `after_step` are dropped so a resumed run's log reads as one run."""

    def __init__(self, out_dir: Path, enabled: bool = True, after_step: int = 0, loggers: list[str] = (),
                 run_name: str = "t2v", config: dict[str, Any] | None = None, project: str | None = None):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.is_file() and after_step > 0:
            kept = [line for line in self.path.read_text(errors="replace").splitlines()
                    if (row := _row(line)) is not None and row.get("step", 0) <= after_step]
        # temp file + rename: a crash mid-rewrite keeps the old log whole
        write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode())
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=after_step + 1 if after_step else None)
        if "wandb" in loggers:
            import wandb

            id_file = Path(out_dir) / WANDB_RUN_ID
            run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
            write_bytes_atomic(id_file, run_id.encode())
            self.wandb = wandb.init(project=project or "t2v", name=run_name, id=run_id, resume="allow",
                                    dir=str(out_dir), config=config or {})

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {k: v for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, row["step"])
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, step=row["step"])

    def videos(self, step: int, sheet: np.ndarray, animation: Path, captions: list[str]) -> None:
        """The preview grid of `step`: its contact sheet (uint8 HxWx3) and animated file, with the captions."""
        if not self.enabled:
            return
        text = "\n".join(f"{i}: {c}" for i, c in enumerate(captions))
        if self.tb is not None:
            self.tb.add_image("samples", sheet, step, dataformats="HWC")
            self.tb.add_text("samples/captions", text, step)
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Video(str(animation), caption=text),
                            "samples_sheet": wandb.Image(sheet, caption=text)}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _row(line: str) -> dict[str, Any] | None:
    """A metrics row, or None for a blank or torn line (a process killed mid-write leaves half a line)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step", 0), int) else None
