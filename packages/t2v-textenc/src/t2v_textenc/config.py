"""EmbedConfig: the `embed:` section of an experiment config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from t2v_data.experiment import Paths
from t2v_model.config import TextEncoderInfo, check_token_layer
from t2v_model.errors import ConfigError
from t2v_model.schema import build


@dataclass
class EmbedConfig:
    in_dir: str | None = None  # raw shards; None = the data section's out_dir
    out_dir: str | None = None  # pre-embedded shards; None = data/<name>/embedded
    # None = the packaged all-MiniLM-L6-v2; a hub id (bert-base-cased, google-t5/t5-base, a CLIP...) or a local dir
    # of a BERT-like, T5 or CLIP text model (docs/embed.md)
    encoder: str | None = None
    tokens: bool = False  # also store per-token embeddings + mask (for cross-attention)
    # the encoder layer the per-token embeddings come from: -1 the last, 0 the embedding layer (context-free word
    # vectors: a held-out colour-shape pair is then made of vectors training saw; docs/embed.md)
    token_layer: int = TextEncoderInfo.token_layer
    # tokens per caption including the start/end tokens ([CLS]/[SEP], </s>, BOS/EOS); longer captions are cut (counted)
    max_length: int = TextEncoderInfo.max_length
    batch_size: int = 64
    cache_dir: str | None = "cache/text"  # persistent caption-embedding cache; None = in memory for this run only
    device: str = "cpu"  # cpu | cuda | cuda:N | mps | auto (cuda when there is one)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # half precision on GPU only

    def validate(self) -> None:
        if self.max_length < 2:
            raise ConfigError(f"max_length: must be >= 2, got {self.max_length}")
        check_token_layer(self.token_layer)
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be positive, got {self.batch_size}")
        if self.dtype != "float32" and not self.device.startswith("cuda"):
            raise ConfigError(f"dtype: {self.dtype} needs a cuda device (device is {self.device!r}); use float32")
        same = self.in_dir is not None and self.out_dir is not None
        if same and Path(self.in_dir).resolve() == Path(self.out_dir).resolve():  # "d" and "d/" are one directory
            raise ConfigError(f"out_dir: must differ from in_dir ({self.in_dir})")


def embed_config_from_experiment(raw: dict[str, Any]) -> EmbedConfig:
    """Build EmbedConfig from a whole experiment config, in_dir/out_dir defaulting to the experiment's layout
    (t2v_data.experiment.Paths: the raw shards data.out_dir, and data/<name>/embedded)."""
    section = dict(raw.get("embed") or {})
    paths = Paths(raw)
    section["in_dir"] = str(paths.embed_in)
    section["out_dir"] = str(paths.embedded)
    return build(EmbedConfig, section, where="embed")
