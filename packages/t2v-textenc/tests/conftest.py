"""Raw-shard fixtures written here with webdataset.TarWriter (docs/FORMATS.md), independent of the prepare stage."""

import io
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import webdataset as wds

from t2v_model.text_encoder import load_text_encoder

GEOMETRY = {"frames": 2, "height": 4, "width": 4, "channels": 3, "fps": 8}


def video(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def meta(captions, source_id: str) -> bytes:
    return json.dumps({"captions": captions, "source": "shapes", "source_id": source_id,
                       "attributes": {"shape": "circle"}}).encode()


def write_raw(directory: Path, shards: dict[str, list[dict]]) -> Path:
    """shards: {"train-000000.tar": [{"__key__", "video.npy", "meta.json"}...]} -> a raw shard dir + manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    splits: dict = {}
    for name, samples in shards.items():
        with wds.TarWriter(str(directory / name), mtime=0) as sink:
            for s in samples:
                sink.write(s)
        split = splits.setdefault(name.split("-")[0], {"count": 0, "shards": []})
        split["count"] += len(samples)
        split["shards"].append({"name": name, "count": len(samples)})
    manifest = {"format": "t2v-shards/1", "stage": "prepare", "source": "shapes", "geometry": GEOMETRY,
                "config_hash": "abc123", "splits": splits, "rejects": 0, "created": "2024-01-01T00:00:00+00:00"}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def sample(i: int, captions) -> dict:
    return {"__key__": f"shapes-{i:08d}", "video.npy": video(i), "meta.json": meta(captions, f"src{i}")}


CAPTIONS = {
    0: ["a red circle moving left", "a red circle moves to the left"],
    1: ["a blue square moving up", "a red circle moving left"],  # shared with sample 0
    2: ["a green triangle bouncing", "a green triangle bouncing"],  # duplicate inside one sample
    3: ["a yellow star spinning slowly in the middle of a black background"],
    4: ["a blue square moving up"],
}


@pytest.fixture
def captions() -> dict[int, list[str]]:
    return CAPTIONS


@pytest.fixture
def raw_dir(tmp_path) -> Path:
    bad_meta = {"__key__": "shapes-00000090", "video.npy": video(90), "meta.json": b"{not json"}
    no_caption = {"__key__": "shapes-00000091", "video.npy": video(91), "meta.json": meta([], "src91")}
    no_video = {"__key__": "shapes-00000092", "meta.json": meta(["a lone caption"], "src92")}
    return write_raw(tmp_path / "raw", {
        "train-000000.tar": [sample(0, CAPTIONS[0]), bad_meta, sample(1, CAPTIONS[1]), no_caption],
        "train-000001.tar": [sample(2, CAPTIONS[2]), sample(3, CAPTIONS[3]), no_video],
        "val-000000.tar": [sample(4, CAPTIONS[4])],
    })


@pytest.fixture(scope="session")
def encoder():
    return load_text_encoder(None)


class Counter:
    """Counts forward passes of the BERT and records every text given to encode()."""

    def __init__(self, enc, monkeypatch):
        self.forwards = 0
        self.texts: list[str] = []
        forward, encode = enc.model.forward, enc.encode

        def counting_forward(*a, **k):
            self.forwards += 1
            return forward(*a, **k)

        def recording_encode(texts, tokens=False, token_layer=-1):
            self.texts += list(texts)
            return encode(texts, tokens=tokens, token_layer=token_layer)

        monkeypatch.setattr(enc.model, "forward", counting_forward)
        monkeypatch.setattr(enc, "encode", recording_encode)


@pytest.fixture
def counter(encoder, monkeypatch) -> Counter:
    return Counter(encoder, monkeypatch)


@pytest.fixture
def make_raw():
    """(write_raw, sample), for tests that build raw shards of their own."""
    return write_raw, sample
