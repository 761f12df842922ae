import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from t2v_data.shards import (
    Manifest,
    SampleError,
    ShardWriter,
    decode_sample,
    embedded_members,
    encode_sample,
    iter_samples,
    iter_tar,
    npy_bytes,
    shard_name,
)
from t2v_model.errors import DataError


def _samples(n, rng):
    return [
        (
            f"k-{i:03d}",
            rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8),
            {"captions": [f"caption {i}"], "source": "test", "source_id": str(i), "attributes": {"i": i}},
        )
        for i in range(n)
    ]


def _write(path, samples):
    with ShardWriter(path) as w:
        for key, video, meta in samples:
            w.write(key, encode_sample(video, meta))


def test_webdataset_reads_back_what_was_written(tmp_path):
    samples = _samples(5, np.random.default_rng(0))
    _write(tmp_path / "train-000000.tar", samples)
    got = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False).decode())
    assert [g["__key__"] for g in got] == [k for k, _, _ in samples]
    for g, (_, video, meta) in zip(got, samples, strict=True):
        assert np.array_equal(g["video.npy"], video) and g["video.npy"].dtype == np.uint8
        assert g["meta.json"] == meta


def test_shard_bytes_are_reproducible_and_writes_atomic(tmp_path):
    samples = _samples(3, np.random.default_rng(1))
    _write(tmp_path / "a.tar", samples)
    _write(tmp_path / "b.tar", samples)
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "c.tar") as w:
            w.write("x", {"meta.json": b"{}"})
            raise RuntimeError("crash mid-shard")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "b.tar"]  # no partial shard, no temp file


def test_writer_limits_and_keys(tmp_path):
    w = ShardWriter(tmp_path / "s.tar", max_samples=2, max_bytes=10_000)
    w.write("a", {"x.bin": b"1" * 4000})
    assert w.fits(1000) and not w.fits(8000)
    with pytest.raises(ValueError, match="exceeds the shard limits"):
        w.write("b", {"x.bin": b"1" * 8000})
    with pytest.raises(ValueError, match="no dots"):
        w.write("b.c", {"x.bin": b""})
    w.close()
    assert [k for k, _ in iter_tar(tmp_path / "s.tar")] == ["a"]


def _manifest(tmp_path, **over):
    m = {
        "format": "t2v-shards/1",
        "stage": "prepare",
        "source": "test",
        "geometry": {"frames": 4, "height": 16, "width": 16, "channels": 3, "fps": 8},
        "config_hash": "x",
        "rejects": 0,
        "created": "now",
        "splits": {
            "train": {"count": 5, "shards": [{"name": shard_name("train", 0), "count": 5}]},
            "val": {"count": 0, "shards": []},
        },
    }
    m.update(over)
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    return m


def test_iter_samples_and_manifest_errors(tmp_path):
    samples = _samples(5, np.random.default_rng(2))
    _write(tmp_path / "train-000000.tar", samples)
    _manifest(tmp_path)
    m = Manifest.read(tmp_path)
    assert (m.stage, m.geometry.frames, m.count("train"), m.count("val"), m.count("test")) == ("prepare", 4, 5, 0, 0)
    got = list(iter_samples(m, "train"))
    assert [g.key for g in got] == [k for k, _, _ in samples]
    assert np.array_equal(got[2].video, samples[2][1]) and got[2].meta == samples[2][2]
    assert list(iter_samples(m, "val")) == [] and list(iter_samples(m, "test")) == []
    with pytest.raises(DataError, match="unknown split 'dev'"):
        m.shards("dev")
    assert json.loads(m.to_bytes()) == {k: v for k, v in json.loads((tmp_path / "manifest.json").read_text()).items()
                                         if k != "splits"} | {"splits": json.loads(m.to_bytes())["splits"]}

    _manifest(tmp_path, geometry={"frames": 5, "height": 16, "width": 16, "channels": 3, "fps": 8})
    with pytest.raises(DataError, match=r"train-000000.tar: sample k-000: video.npy is uint8 \(4, 16, 16, 3\), the "
                                        r"manifest says uint8 \(5, 16, 16, 3\)"):
        list(iter_samples(Manifest.read(tmp_path), "train"))
    _manifest(tmp_path, format="other/1")
    with pytest.raises(DataError, match=r"manifest.json: format: must be 't2v-shards/1'"):
        Manifest.read(tmp_path)
    _manifest(tmp_path, splits={"train": {"count": 5, "shards": [{"name": "train-000009.tar", "count": 5}]}})
    with pytest.raises(DataError, match=r"train-000009.tar: shard listed in the manifest is missing"):
        Manifest.read(tmp_path)
    _manifest(tmp_path, splits={"train": {"count": 6, "shards": [{"name": "train-000000.tar", "count": 5}]}})
    with pytest.raises(DataError, match=r"manifest.json: splits.train.count: 6 is not the sum of its shard counts"):
        Manifest.read(tmp_path)
    _manifest(tmp_path, splits={"train": {"count": 5, "shards": [{"name": "val-000000.tar", "count": 5}]}})
    with pytest.raises(DataError, match=r"'val-000000.tar' is not a train-NNNNNN.tar name"):
        Manifest.read(tmp_path)
    _manifest(tmp_path, stage="embed")
    with pytest.raises(DataError, match=r"text_encoder: the embed stage's manifest must say"):
        Manifest.read(tmp_path)
    _manifest(tmp_path, geometry={"frames": 4, "height": 16, "width": 16, "channels": 3})
    with pytest.raises(DataError, match=r"manifest.json: geometry.fps: missing"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        Manifest.read(tmp_path)
    with pytest.raises(DataError, match="no manifest"):
        Manifest.read(tmp_path / "nowhere")


def test_decode_sample_checks_every_member_against_the_manifest(tmp_path):
    _manifest(tmp_path, stage="embed", text_encoder={"id": "enc", "dim": 4, "max_length": 3, "weights_hash": "h",
                                                     "tokens": True})
    (tmp_path / "train-000000.tar").touch()
    m = Manifest.read(tmp_path)
    video = np.zeros((4, 16, 16, 3), np.uint8)
    meta = {"captions": ["a", "b"], "source": "t", "source_id": "0", "attributes": {}}
    text, tokens, mask = np.ones((2, 4), np.float16), np.ones((2, 3, 4), np.float16), np.ones((2, 3), np.uint8)
    good = embedded_members(encode_sample(video, meta), text, tokens, mask)
    s = decode_sample("k", good, m, "x.tar")
    assert s.captions == ["a", "b"] and s.text.shape == (2, 4) and s.tokens.shape == (2, 3, 4) and s.mask.sum() == 6

    def bad(member, value):
        return {**good, member: value}

    cases = [
        (bad("video.npy", npy_bytes(video.astype(np.float64))), r"video.npy is float64 \(4, 16, 16, 3\), the manifest"),
        (bad("text.npy", npy_bytes(text[:1])), r"text.npy is float16 \(1, 4\), the manifest says float16 \(2, 4\)"),
        (bad("text.npy", npy_bytes(np.full((2, 4), np.nan, np.float16))), "text.npy holds NaN or infinite values"),
        (bad("tokens.npy", npy_bytes(tokens[:, :2])), r"mask.npy is uint8 \(2, 3\), the manifest says uint8 \(2, 2\)"),
        (bad("tokens.npy", npy_bytes(np.ones((2, 4, 4), np.float16))), r"tokens.npy holds 4 tokens per caption, the "
                                                                         r"manifest says 1 to 3"),
        (bad("tokens.npy", npy_bytes(tokens[..., :3])), r"tokens.npy is float16 \(2, 3, 3\), the manifest says "
                                                         r"float16 \(2, L, 4\)"),
        (bad("mask.npy", b"garbage"), r"mask.npy is not a valid .npy array"),
        (bad("meta.json", b"[1, 2]"), "meta.json must be an object"),
        (bad("meta.json", json.dumps({**meta, "captions": []}).encode()), "meta.json captions must be a non-empty"),
        ({k: v for k, v in good.items() if k != "text.npy"}, "missing text.npy"),
    ]
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases.append((bad("video.npy", pickled.getvalue()), "video.npy is not a valid .npy array"))  # never unpickled
    for members, message in cases:
        with pytest.raises(SampleError, match=rf"^x.tar: sample k: {message}"):
            decode_sample("k", members, m, "x.tar")


def test_npy_members_are_not_pickles(tmp_path):
    _write(tmp_path / "t.tar", _samples(1, np.random.default_rng(3)))
    with tarfile.open(tmp_path / "t.tar") as tar:
        data = tar.extractfile("k-000.video.npy").read()
    np.load(io.BytesIO(data), allow_pickle=False)  # raises if it needed pickle
