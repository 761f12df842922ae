"""EmbedConfig: the `embed:` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from t2v_data.config import ConfigError, build


@dataclass
class EmbedConfig:
    in_dir: str | None = None  # raw shards; None = the data section's out_dir
    out_dir: str | None = None  # pre-embedded shards; None = data/<name>/embedded
    encoder: str | None = None  # None = the packaged all-MiniLM-L6-v2; a hub name (e.g. bert-base-cased) or a dir
    tokens: bool = False  # also store per-token embeddings + mask (for cross-attention)
    max_length: int = 77  # tokens per caption including [CLS]/[SEP]; longer captions are cut (and counted)
    batch_size: int = 64
    cache_dir: str | None = "cache/text"  # persistent caption-embedding cache; None = in memory for this run only
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # half precision on GPU only

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"max_length: must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be positive, got {self.batch_size}")
        if self.dtype != "float32" and not self.device.startswith("cuda"):
            raise ConfigError(f"dtype: {self.dtype} needs a cuda device (device is {self.device!r}); use float32")
        same = self.in_dir is not None and self.out_dir is not None
        if same and Path(self.in_dir).resolve() == Path(self.out_dir).resolve():  # "d" and "d/" are one directory
            raise ConfigError(f"out_dir: must differ from in_dir ({self.in_dir})")


def embed_config_from_experiment(raw: dict[str, Any]) -> EmbedConfig:
    """Build EmbedConfig from a whole experiment config, filling in_dir/out_dir from `data.out_dir` and `name`."""
    section = dict(raw.get("embed") or {})
    name = raw.get("name")
    data = raw.get("data") or {}
    if section.get("in_dir") is None:
        if isinstance(data, dict) and data.get("out_dir"):
            section["in_dir"] = data["out_dir"]
        elif name:
            section["in_dir"] = f"data/{name}/raw"
        else:
            raise ConfigError("embed.in_dir: not set and there is no data.out_dir or name to derive it from")
    if section.get("out_dir") is None:
        if not name:
            raise ConfigError("embed.out_dir: not set and there is no name to derive data/<name>/embedded from")
        section["out_dir"] = f"data/{name}/embedded"
    return build(EmbedConfig, section, where="embed")
