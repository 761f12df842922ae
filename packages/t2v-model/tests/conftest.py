"""Tiny randomly initialised text encoders of each family, saved like hub model directories (offline: the tokenizers
are built here, BERT's from the packaged MiniLM's vocabulary)."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from t2v_model.text_encoder import packaged_model_path

HIDDEN = 32
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _words() -> list[str]:
    """Whole lower-case ASCII words of the MiniLM vocabulary (about 20k)."""
    return [w for w in (packaged_model_path() / "vocab.txt").read_text().splitlines()
            if w.isascii() and w.isalpha() and w.islower()]


def make_bert(d: Path, seed: int = 0, model_type: str = "bert") -> Path:
    """BERT (or RoBERTa-shaped DistilBERT...: model_type picks the config) with the packaged MiniLM's tokenizer."""
    from transformers import AutoConfig, AutoModel

    d.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(packaged_model_path() / name, d / name)
    sizes = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128}
    if model_type == "distilbert":
        sizes = {"dim": HIDDEN, "n_layers": 2, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 128}
    config = AutoConfig.for_model(model_type, vocab_size=30522, **sizes)
    torch.manual_seed(seed)
    AutoModel.from_config(config).save_pretrained(d)
    return d


def make_t5(d: Path, model_type: str = "t5", seed: int = 0) -> Path:
    """A T5 encoder-decoder (as on the hub: the encoder is what is loaded) with a unigram tokenizer over whole words
    and single letters: <pad>=0, </s>=1, <unk>=2."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, T5Tokenizer

    d.mkdir(parents=True, exist_ok=True)
    words = _words()
    letters = sorted({c for w in words for c in w})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -5.0 - 0.01 * len(w)) for w in words] + [(c, -10.0) for c in letters]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(d)
    config = AutoConfig.for_model(model_type, vocab_size=len(vocab), d_model=HIDDEN, d_kv=8, d_ff=64, num_layers=2,
                                  num_heads=4, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(d)
    return d


def make_clip(d: Path, full: bool = False, seed: int = 0) -> Path:
    """A CLIP text model (hidden 32, 77 positions) with a byte-level CLIP tokenizer (no merges: one token per
    character); `full`: a whole CLIPModel (text + vision), as openai/clip-* checkpoints are."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

    d.mkdir(parents=True, exist_ok=True)
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # byte-level BPE's byte -> char table

    chars = list(bytes_to_unicode().values())
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer.from_pretrained(d).save_pretrained(d)
    end = vocab["<|endoftext|>"]
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                          eos_token_id=end, pad_token_id=end)
    torch.manual_seed(seed)
    if full:
        vision = CLIPVisionConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, image_size=16, patch_size=8)
        CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             projection_dim=16)).save_pretrained(d)
    else:
        CLIPTextModel(text).save_pretrained(d)
    return d


def make_gpt2(d: Path) -> Path:
    from transformers import GPT2Config, GPT2Model

    d.mkdir(parents=True, exist_ok=True)
    GPT2Model(GPT2Config(vocab_size=100, n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=64, bos_token_id=0,
                                eos_token_id=0)).save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, Path]:
    """{"bert" | "t5" | "umt5" | "clip" | "clip-full": a model directory}, built once per session."""
    root = tmp_path_factory.mktemp("tiny_encoders")
    return {"bert": make_bert(root / "tiny-bert"), "t5": make_t5(root / "tiny-t5"),
            "umt5": make_t5(root / "tiny-umt5", "umt5"), "clip": make_clip(root / "tiny-clip"),
            "clip-full": make_clip(root / "tiny-clip-full", full=True)}


@pytest.fixture(scope="session")
def make_encoder() -> SimpleNamespace:
    """The builders: make_encoder.bert(dir, seed=0, model_type="bert"), .t5(dir, model_type="t5", seed=0),
    .clip(dir, full=False, seed=0), .gpt2(dir); each returns the directory."""
    return SimpleNamespace(bert=make_bert, t5=make_t5, clip=make_clip, gpt2=make_gpt2)
