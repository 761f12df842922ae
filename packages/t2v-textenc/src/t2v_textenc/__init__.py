"""t2v_textenc: the embed stage. Raw shards -> pre-embedded shards with every caption encoded once by the frozen
text encoder of t2v_model (cached across runs), plus the trainer's `check_encoder` guard. See docs/embed.md."""

from .cache import CacheError, CachedEmbedding, EmbeddingCache
from .check import EncoderMismatchError, check_encoder
from .config import EmbedConfig, embed_config_from_experiment
from .embed import EmbedSummary, SampleError, parse_captions, run_embed
from .shards import ShardError, iter_tar, read_manifest

__all__ = [
    "CachedEmbedding",
    "EmbedConfig",
    "EmbedSummary",
    "EmbeddingCache",
    "CacheError",
    "EncoderMismatchError",
    "SampleError",
    "ShardError",
    "check_encoder",
    "embed_config_from_experiment",
    "iter_tar",
    "parse_captions",
    "read_manifest",
    "run_embed",
]
