"""Persistent caption-embedding cache: sqlite, keyed by (encoder id@weights hash, max_length, caption text).

Vectors are stored as float16 bytes (the precision of the shards), never pickled. Token embeddings are stored for
the real tokens only (length rows); a row without tokens is a miss when tokens are wanted.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2v_model.errors import DataError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    encoder TEXT NOT NULL,
    max_length INTEGER NOT NULL,
    text TEXT NOT NULL,
    pooled BLOB NOT NULL,
    tokens BLOB,
    length INTEGER,
    PRIMARY KEY (encoder, max_length, text)
) WITHOUT ROWID
"""
_CHUNK = 500  # stay under sqlite's host-parameter limit


@dataclass
class CachedEmbedding:
    pooled: np.ndarray  # float16 (D,)
    tokens: np.ndarray | None = None  # float16 (length, D): real tokens only


class CacheError(DataError):
    """An unusable cache file or directory; the message names it."""


class EmbeddingCache:
    FILE = "text_embeddings.sqlite"

    def __init__(self, cache_dir: str | Path | None, encoder_key: str, max_length: int, dim: int):
        self.encoder_key, self.max_length, self.dim = encoder_key, max_length, dim
        self.path = None if cache_dir is None else Path(cache_dir) / self.FILE
        try:
            if self.path is None:
                self.db = sqlite3.connect(":memory:")
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(self.path, timeout=60)
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(_SCHEMA)
            self.db.commit()
        except (OSError, sqlite3.Error) as e:
            raise CacheError(f"{self.path}: unusable embedding cache ({e}); delete it or set embed.cache_dir") from None

    def get_many(self, texts: Iterable[str], tokens: bool) -> dict[str, CachedEmbedding]:
        """The cached entries among `texts` (with tokens when `tokens`; rows lacking them are left out). A row whose
        blobs do not fit this encoder (a damaged or foreign cache) is left out too: a miss, encoded again."""
        texts = list(dict.fromkeys(texts))
        found: dict[str, CachedEmbedding] = {}
        cols = "text, pooled, tokens, length" if tokens else "text, pooled, NULL, NULL"
        for start in range(0, len(texts), _CHUNK):
            chunk = texts[start : start + _CHUNK]
            rows = self.db.execute(
                f"SELECT {cols} FROM embeddings WHERE encoder = ? AND max_length = ? "
                f"AND text IN ({','.join('?' * len(chunk))})",
                (self.encoder_key, self.max_length, *chunk),
            )
            for text, pooled, tok, length in rows:
                if tokens and tok is None:
                    continue
                if not isinstance(pooled, bytes) or len(pooled) != 2 * self.dim:
                    continue
                entry = CachedEmbedding(np.frombuffer(pooled, dtype=np.float16))
                if tok is not None:
                    if (not isinstance(tok, bytes) or not isinstance(length, int)
                            or not 1 <= length <= self.max_length or len(tok) != 2 * length * self.dim):
                        continue
                    entry.tokens = np.frombuffer(tok, dtype=np.float16).reshape(length, self.dim)
                if not np.isfinite(entry.pooled).all() or (entry.tokens is not None
                                                          and not np.isfinite(entry.tokens).all()):
                    continue
                found[text] = entry
        return found

    def missing(self, texts: Iterable[str], tokens: bool) -> list[str]:
        texts = list(dict.fromkeys(texts))
        have = self.get_many(texts, tokens)
        return [t for t in texts if t not in have]

    def put_many(self, entries: dict[str, CachedEmbedding]) -> None:
        rows = []
        for text, e in entries.items():
            tok = None if e.tokens is None else e.tokens.astype(np.float16).tobytes()
            length = None if e.tokens is None else len(e.tokens)
            rows.append((self.encoder_key, self.max_length, text, e.pooled.astype(np.float16).tobytes(), tok, length))
        try:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as e:  # "database or disk is full", a read-only file...
            raise CacheError(f"{self.path or 'the in-memory cache'}: cannot write the embedding cache ({e}); free "
                             f"space there or set embed.cache_dir") from None

    def close(self) -> None:
        self.db.close()
