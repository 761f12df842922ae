"""`metrics.jsonl` (one JSON object per line, always) and TensorBoard scalars (when tensorboard is installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from t2v_model.files import write_bytes_atomic


class MetricsLog:
    """Rank 0 only. On (re)start, rows after `after_step` are dropped so a resumed run's log reads as one run."""

    def __init__(self, out_dir: Path, enabled: bool = True, after_step: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.is_file() and after_step > 0:
            kept = [line for line in self.path.read_text(errors="replace").splitlines()
                    if (row := _row(line)) is not None and row.get("step", 0) <= after_step]
        # temp file + rename: a crash mid-rewrite keeps the old log whole
        write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode())
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _row(line: str) -> dict[str, Any] | None:
    """A metrics row, or None for a blank or torn line (a process killed mid-write leaves half a line)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("step", 0), int) else None
