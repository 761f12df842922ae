import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds
from t2v_data.errors import DataError
from t2v_data.shards import ShardWriter, encode_sample, iter_samples, iter_shard, read_manifest, shard_name


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
    assert [k for k, _ in iter_shard(tmp_path / "s.tar")] == ["a"]


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
    got = list(iter_samples(tmp_path, "train"))
    assert [g["key"] for g in got] == [k for k, _, _ in samples]
    assert np.array_equal(got[2]["video"], samples[2][1]) and got[2]["meta"] == samples[2][2]
    assert set(got[0]["raw"]) == {"video.npy", "meta.json"}
    assert list(iter_samples(tmp_path, "val")) == []
    with pytest.raises(DataError, match="unknown split"):
        list(iter_samples(tmp_path, "test"))

    _manifest(tmp_path, geometry={"frames": 5, "height": 16, "width": 16, "channels": 3, "fps": 8})
    with pytest.raises(DataError, match=r"sample k-000 video is uint8 \(4, 16, 16, 3\)"):
        list(iter_samples(tmp_path, "train"))
    _manifest(tmp_path, format="other/1")
    with pytest.raises(DataError, match=r"manifest.json: format must be"):
        read_manifest(tmp_path)
    _manifest(tmp_path, splits={"train": {"count": 5, "shards": [{"name": "train-000009.tar", "count": 5}]}})
    with pytest.raises(DataError, match=r"train-000009.tar: shard listed in the manifest is missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(tmp_path)
    with pytest.raises(DataError, match="no manifest"):
        read_manifest(tmp_path / "nowhere")


def test_npy_members_are_not_pickles(tmp_path):
    _write(tmp_path / "t.tar", _samples(1, np.random.default_rng(3)))
    with tarfile.open(tmp_path / "t.tar") as tar:
        data = tar.extractfile("k-000.video.npy").read()
    np.load(io.BytesIO(data), allow_pickle=False)  # raises if it needed pickle
