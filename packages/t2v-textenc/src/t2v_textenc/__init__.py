"""t2v_textenc: the embed stage. Raw shards -> pre-embedded shards with every caption encoded once by the frozen
text encoder of t2v_model, cached across runs. See docs/embed.md."""

from .cache import CachedEmbedding, CacheError, EmbeddingCache
from .config import EmbedConfig, embed_config_from_experiment
from .embed import EmbedSummary, run_embed

__all__ = [
    "CacheError",
    "CachedEmbedding",
    "EmbedConfig",
    "EmbedSummary",
    "EmbeddingCache",
    "embed_config_from_experiment",
    "run_embed",
]
