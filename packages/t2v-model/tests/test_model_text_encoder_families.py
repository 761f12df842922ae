"""The three text encoder families (BERT-like, T5, CLIP text), refusing the rest from config.json alone, and portable
ids: on tiny random models saved to temp dirs (conftest.py), offline."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from t2v_model.text_encoder import (
    PACKAGED_ID,
    TextEncoder,
    TextEncoderError,
    describe_text_encoder,
    encoder_id,
    load_text_encoder,
    masked_mean,
    packaged_model_path,
)

HIDDEN = 32  # the tiny models' width (conftest.py)
TEXTS = ["a red circle moving left", "a tiny blue square bouncing slowly across a grey background", ""]
# family, first token (None: T5 has none), whether pooling leaves position 0 out
FAMILIES = {"bert": ("bert", "[CLS]", True), "t5": ("t5", None, False), "umt5": ("t5", None, False),
            "clip": ("clip", "<|startoftext|>", True), "clip-full": ("clip", "<|startoftext|>", True)}
END = {"bert": "[SEP]", "t5": "</s>", "clip": "<|endoftext|>"}


@pytest.fixture(scope="module")
def encoders(tiny_encoders) -> dict[str, TextEncoder]:
    return {name: TextEncoder(d) for name, d in tiny_encoders.items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_wraps_texts_in_its_special_tokens(encoders, name):
    enc = encoders[name]
    family, start, _ = FAMILIES[name]
    assert enc.family == family and enc.dim == HIDDEN and enc.id == f"tiny-{name}"
    assert not enc.model.training and all(not p.requires_grad for p in enc.model.parameters())
    if name == "clip-full":  # the text half of a whole CLIP checkpoint
        assert type(enc.model).__name__ == "CLIPTextModel"
    if family == "t5":
        assert type(enc.model).__name__.endswith("EncoderModel")  # T5's encoder alone, from an encoder-decoder
    for ids in enc.tokenize(TEXTS)[0]:
        tokens = enc.tokenizer.convert_ids_to_tokens(ids)
        assert tokens[-1] == END[family]
        if start:
            assert tokens[0] == start
    out = enc.encode(TEXTS, tokens=True)
    lengths = [len(ids) for ids in enc.tokenize(TEXTS)[0]]
    assert out.pooled.shape == (3, HIDDEN) and out.pooled.dtype == torch.float32
    assert out.tokens.shape == (3, max(lengths), HIDDEN) and out.mask.shape == (3, max(lengths))
    assert out.mask.sum(1).tolist() == lengths and out.tokens[~out.mask].abs().sum() == 0
    assert torch.isfinite(out.pooled).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_pooled_is_the_masked_mean_the_family_specifies(encoders, name):
    """BERT: [CLS] out, [SEP] in; T5: every real token, </s> in; CLIP: BOS out, EOS in. Checked against the model run
    by hand on the tokenizer's own padded batch."""
    enc = encoders[name]
    _, _, skip_first = FAMILIES[name]
    batch = enc.tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        hidden = enc.model(**batch).last_hidden_state
    first = 1 if skip_first else 0
    lengths = batch["attention_mask"].sum(1).tolist()
    expected = torch.stack([hidden[i, first:n].mean(0) for i, n in enumerate(lengths)])
    got = enc.encode(TEXTS)
    torch.testing.assert_close(got.pooled, expected, atol=1e-5, rtol=1e-5)
    with_tokens = enc.encode(TEXTS, tokens=True)
    torch.testing.assert_close(got.pooled, masked_mean(with_tokens.tokens, with_tokens.mask, skip_first=skip_first))
    other = torch.stack([hidden[i, 1 - first:n].mean(0) for i, n in enumerate(lengths)])
    assert (got.pooled[0] - other[0]).abs().max() > 1e-4  # the choice matters


def test_clips_first_token_is_the_same_for_every_caption(encoders):
    """Why CLIP pools after BOS: its causal attention lets BOS see only itself, so its state carries no caption."""
    out = encoders["clip"].encode(TEXTS, tokens=True)
    assert torch.allclose(out.tokens[0, 0], out.tokens[1, 0], atol=1e-6)
    assert torch.allclose(out.tokens[0, 0], out.tokens[2, 0], atol=1e-6)
    bert = encoders["bert"].encode(TEXTS, tokens=True)  # BERT's [CLS] does see the caption
    assert not torch.allclose(bert.tokens[0, 0], bert.tokens[1, 0], atol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_truncation_keeps_the_start_and_end_tokens(tiny_encoders, encoders, name):
    family, start, _ = FAMILIES[name]
    short = TextEncoder(tiny_encoders[name], max_length=5)
    long_text = "one two three four five six seven eight nine ten"
    ids, cut = short.tokenize([long_text, "red"])
    assert cut == [0] and len(ids[0]) == 5
    full = encoders[name].tokenize([long_text])[0][0]
    assert ids[0] == full[:4] + [full[-1]]  # the first 4 tokens, then the end token
    tokens = short.tokenizer.convert_ids_to_tokens(ids[0])
    assert tokens[-1] == END[family] and (start is None or tokens[0] == start)
    out = short.encode([long_text, "red"], tokens=True)
    assert out.num_truncated == 1 and out.tokens.shape[1] == 5 and out.mask[0].all()


@pytest.mark.parametrize("name", FAMILIES)
def test_a_caption_gets_the_same_vector_alone_or_padded_in_a_batch(encoders, name):
    enc = encoders[name]
    alone = enc.encode(["a green triangle"]).pooled
    batched = enc.encode([TEXTS[1] * 2, "a green triangle", "x"]).pooled
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", FAMILIES)
def test_describe_agrees_with_the_loaded_models_info(tiny_encoders, encoders, name):
    for tokens in (False, True):
        assert describe_text_encoder(tiny_encoders[name], tokens=tokens) == encoders[name].info(tokens=tokens)
    assert describe_text_encoder(str(tiny_encoders[name]))["id"] == f"tiny-{name}"


def test_more_bert_family_members_load(tmp_path, make_encoder):
    distil = TextEncoder(make_encoder.bert(tmp_path / "distil", model_type="distilbert"))  # hidden size named "dim"
    assert distil.family == "bert" and distil.dim == HIDDEN and distil.info() == describe_text_encoder(distil.source)


def _corrupt_weights(d: Path) -> None:
    for f in d.glob("*.safetensors"):
        f.write_bytes(b"not weights")


@pytest.mark.parametrize("model_type, config, says", [
    ("gpt2", None, "model type 'gpt2' is a decoder (a causal language model)"),
    ("llama", {"model_type": "llama", "hidden_size": 32}, "model type 'llama' is a decoder (a causal language model)"),
    ("bart", {"model_type": "bart", "is_encoder_decoder": True}, "model type 'bart' is an encoder-decoder (of those "
                                                                 "only T5's encoder is supported)"),
    ("bert-decoder", {"model_type": "bert", "is_decoder": True},
     "model type 'bert' is a decoder (a causal language model)"),
    ("vit", {"model_type": "vit"}, "model type 'vit' is not a text encoder this supports"),
    ("fnet", {"model_type": "fnet"}, "model type 'fnet' is not a text encoder this supports"),
    ("mine", {"model_type": "my-own-encoder"}, "model type 'my-own-encoder' is unknown to transformers"),
    ("untyped", {"hidden_size": 32}, "its config.json names no model_type"),
])
def test_an_unsupported_architecture_is_refused_from_its_config_alone(tmp_path, monkeypatch, make_encoder, model_type,
                                                                     config, says):
    d = tmp_path / model_type
    if config is None:
        make_encoder.gpt2(d)
        _corrupt_weights(d)  # were they read, the error would be about them
    else:
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config))
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("read more than config.json")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)
    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", never)
    with pytest.raises(TextEncoderError) as info:
        TextEncoder(d)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"text encoder {model_type!r}: unsupported architecture: {says}; supported: BERT-family")
    assert "T5 encoders (t5, mt5, umt5)" in msg and "CLIP text models" in msg
    assert describe_text_encoder(d) is None  # loading gives that error


def hub_cache(cache: Path, repo: str, model_dir: Path | None = None, files: dict | None = None) -> Path:
    """A Hugging Face cache entry for `repo` (what a download leaves), holding a copy of `model_dir` or `files`."""
    rev = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / rev
    if model_dir is not None:
        shutil.copytree(model_dir, snapshot)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (snapshot / name).write_text(text)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(rev)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_a_hub_id_is_refused_from_its_config_before_any_other_download(offline_cache):
    """Only config.json of a GPT-2 is in the cache: were the tokenizer or the weights fetched, offline mode would make
    that the error."""
    hub_cache(offline_cache, "t2v-test/tiny-gpt2", files={"config.json": json.dumps({"model_type": "gpt2"})})
    with pytest.raises(TextEncoderError, match=r"^text encoder 't2v-test/tiny-gpt2': unsupported architecture: "
                                               r"model type 'gpt2' is a decoder"):
        TextEncoder("t2v-test/tiny-gpt2")


def test_a_hub_id_loads_from_the_hf_cache_and_its_snapshot_dir_keeps_the_id(tiny_encoders, encoders, offline_cache):
    snapshot = hub_cache(offline_cache, "t2v-test/tiny-t5", tiny_encoders["t5"])
    by_id = TextEncoder("t2v-test/tiny-t5")
    by_dir = TextEncoder(snapshot)
    assert by_id.id == by_dir.id == encoder_id(snapshot) == "t2v-test/tiny-t5"
    assert by_id.weights_hash == by_dir.weights_hash == encoders["t5"].weights_hash
    assert describe_text_encoder(snapshot) == by_id.info()
    torch.testing.assert_close(by_id.encode(TEXTS).pooled, encoders["t5"].encode(TEXTS).pooled)


def test_local_directories_get_portable_ids(tmp_path, tiny_encoders):
    bert = tiny_encoders["bert"]
    assert encoder_id(bert) == encoder_id(str(bert)) == "tiny-bert"  # a directory's name
    assert encoder_id(None) == encoder_id(PACKAGED_ID) == encoder_id(packaged_model_path()) == PACKAGED_ID
    assert encoder_id("google-t5/t5-base") == "google-t5/t5-base"
    copy = tmp_path / "minilm-copy"  # the packaged weights elsewhere: recognised by their hash
    copy.mkdir()
    for f in packaged_model_path().iterdir():
        if f.is_file():
            (copy / f.name).symlink_to(f)
    assert encoder_id(copy) == PACKAGED_ID
    # the hub id a transformers 4 config.json records (where the model was loaded from before it was saved)
    named = shutil.copytree(bert, tmp_path / "named")
    config = json.loads((named / "config.json").read_text())
    (named / "config.json").write_text(json.dumps({**config, "_name_or_path": "t2v-test/base-bert"}))
    assert encoder_id(named) == TextEncoder(named).id == "t2v-test/base-bert"
    (named / "config.json").write_text(json.dumps({**config, "_name_or_path": "/home/someone/models/bert"}))
    assert encoder_id(named) == "named"  # a path is no name: the directory's name
    # a directory of another machine (a config naming it) gets the same rules from its text
    assert encoder_id("/elsewhere/models/tiny-bert") == "tiny-bert"
    assert encoder_id("/elsewhere/hub/models--org--enc/snapshots/abc123") == "org/enc"


def test_a_tokenizer_that_is_not_the_familys_is_refused_before_the_weights(tmp_path, tiny_encoders, make_encoder):
    d = make_encoder.bert(tmp_path / "bert-with-t5-tokenizer")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / name).unlink()
    for f in tiny_encoders["t5"].glob("tokenizer*"):
        shutil.copy(f, d / f.name)
    _corrupt_weights(d)
    with pytest.raises(TextEncoderError, match=r"^text encoder 'bert-with-t5-tokenizer': its tokenizer does not wrap "
                                               r"a text as \[CLS\] \.\.\. \[SEP\], which a bert model needs$"):
        TextEncoder(d)


def test_clips_77_positions_bound_max_length_before_the_weights(tmp_path, tiny_encoders):
    d = shutil.copytree(tiny_encoders["clip"], tmp_path / "clip")
    _corrupt_weights(d)
    with pytest.raises(TextEncoderError, match=r"^max_length: 78 exceeds the 77 positions of 'clip'$"):
        TextEncoder(d, max_length=78)


def test_weights_that_do_not_cover_the_model_are_refused(tmp_path, tiny_encoders):
    from safetensors.torch import load_file, save_file

    d = shutil.copytree(tiny_encoders["t5"], tmp_path / "t5-partial")
    weights = load_file(d / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "block.1." not in k}, d / "model.safetensors")
    with pytest.raises(TextEncoderError, match=r"^text encoder 't5-partial': the weights in .* lack \d+ of the "
                                               r"model's parameters \(e\.g\. encoder\.block\.1\..*\); not a t5 "
                                               r"checkpoint\?$"):
        TextEncoder(d)


def test_the_cache_tells_directories_of_one_name_apart(tmp_path, make_encoder):
    a = make_encoder.bert(tmp_path / "a" / "enc", seed=1)
    b = make_encoder.bert(tmp_path / "b" / "enc", seed=2)
    ea, eb = load_text_encoder(a), load_text_encoder(b)
    assert ea is not eb and ea.id == eb.id == "enc" and ea.weights_hash != eb.weights_hash
    assert load_text_encoder(str(a)) is ea
