"""Atomic JSON writes (the writer itself is t2v-data's: temp file beside the target, fsync, rename)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from t2v_data.shards import write_atomic

__all__ = ["write_atomic", "write_json_atomic", "write_jsonl_atomic"]


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    data = (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode()
    return write_atomic(path, lambda f: f.write(data))


def write_jsonl_atomic(path: str | Path, rows: list[dict]) -> Path:
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    return write_atomic(path, lambda f: f.write(data))
