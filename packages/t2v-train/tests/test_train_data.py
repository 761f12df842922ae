"""The sample stream: decoding, reproducibility, resuming mid-stream through DataLoader workers, damaged shards."""

from __future__ import annotations

import pytest
import torch

from t2v_data.shards import Manifest
from t2v_model.errors import DataError
from t2v_train.data import batches_per_worker, to_model_input, train_loader, val_batches


def keys_of(loader, n):
    it = iter(loader)
    return [tuple(m["source_id"] for m in next(it)["meta"]) for _ in range(n)]


def loader(shards, workers, done=0):
    return train_loader(Manifest.read(shards), batch_size=3, seed=1, rank=0, world_size=1,
                        num_workers=workers, shuffle_buffer=8, hflip=False, batches_done=done, pin_memory=False)


def test_batches_decode_to_model_input(shards):
    batch = next(iter(loader(shards, 0)))
    assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (3, 4, 8, 8, 3)
    assert batch["text"].dtype == torch.float32 and batch["text"].shape == (3, 16)
    x = to_model_input(batch["video"], torch.device("cpu"))
    assert x.shape == (3, 3, 4, 8, 8) and x.min() >= -1 and x.max() <= 1 and x.min() == -1
    # the chosen caption row matches the caption text it is reported with
    assert all(c in m["captions"] for c, m in zip(batch["caption"], batch["meta"]))


def test_stream_spans_epochs_and_resumes_exactly(shards):
    for workers in (0, 2):
        full = keys_of(loader(shards, workers), 40)  # 120 samples: two and a half epochs of 48
        first, second = sum(full[:16], ()), sum(full[16:32], ())
        assert sorted(first) == sorted(second) == sorted(f"t{i}" for i in range(48))  # each epoch: all, once
        assert first != second  # a new epoch reshuffles
        assert keys_of(loader(shards, workers, done=13), 27) == full[13:]
    assert batches_per_worker(13, 2) == [7, 6] and batches_per_worker(5, 0) == [5]


def test_val_batches_are_fixed(shards):
    a = [b["caption"] for b in val_batches(Manifest.read(shards), 3, 2)]
    b = [b["caption"] for b in val_batches(Manifest.read(shards), 3, 2)]
    assert a == b and len(a) == 2 and len(a[0]) == 3


def test_token_batches_are_trimmed_to_the_longest_caption(token_shards):
    batch = next(iter(val_batches(Manifest.read(token_shards), 4, 1)))
    # "a red square moving left" is 5 words, "red square going left" 4: the 6th (padding) column is dropped
    assert batch["tokens"].shape == (4, 5, 16) and batch["mask"].dtype == torch.bool
    assert batch["mask"].sum(1).tolist() == [5, 5, 5, 5]


def test_hflip_mirrors_about_half_the_clips(shards):
    from t2v_train.data import TrainStream

    stream = TrainStream(Manifest.read(shards), batch_size=1, seed=0, shuffle_buffer=8, hflip=True)
    samples = [s for s, _ in zip(stream.samples(0, 1), range(48))]
    flipped = [s for s in samples if s["_flip"]]
    assert 10 < len(flipped) < 38
    s = flipped[0]
    plain, mirrored = stream.decode({**s, "_flip": False}), stream.decode(s)
    assert torch.equal(mirrored["video"], plain["video"].flip(2))


def test_validation_loss_is_the_uniform_t_loss_whatever_prior_fraction_training_uses(shards):
    from t2v_model import DiffusionConfig, Unet3D, UnetConfig
    from t2v_model.diffusion import GaussianDiffusion
    from t2v_train.config import TrainConfig
    from t2v_train.trainer import validation_loss

    torch.manual_seed(0)
    model = Unet3D(UnetConfig(dim=8, dim_mults=(1, 2), cond_dim=16, attn_heads=2, attn_dim_head=8,
                              use_sparse_linear_attn=False))
    diffusion = GaussianDiffusion(DiffusionConfig(timesteps=100))
    losses = [validation_loss(model, diffusion, Manifest.read(shards), TrainConfig(batch_size=4, prior_fraction=p),
                              limit=2, device=torch.device("cpu"), seed=0) for p in (0.0, 0.5, 0.9)]
    assert losses[0] == losses[1] == losses[2]
    assert losses[0] > 0


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_shard_is_named_in_one_line(damaged_shards, workers):
    bad = damaged_shards
    it = iter(loader(bad, workers))
    with pytest.raises(DataError) as e:
        for _ in range(20):  # 16 batches make an epoch
            next(it)
    assert str(e.value) == f"{bad / 'train-000001.tar'}: unreadable tar shard (unexpected end of data)"
    with pytest.raises(DataError) as e:
        next(val_batches(Manifest.read(bad), 3, 1))
    assert str(e.value) == f"{bad / 'val-000000.tar'}: unreadable tar shard (invalid header)"


def test_a_shard_cut_between_two_samples_is_caught_by_its_manifest_count(shards, tmp_path):
    import shutil
    import tarfile
    from pathlib import Path

    bad = Path(shutil.copytree(shards, tmp_path / "cut"))
    with tarfile.open(bad / "val-000000.tar") as tar:
        third = tar.getmembers()[6]  # 3 members per sample: the header of sample 3
    with open(bad / "val-000000.tar", "r+b") as f:
        f.truncate(third.offset)
    with pytest.raises(DataError) as e:
        list(val_batches(Manifest.read(bad), 1, 100))
    assert str(e.value) == (f"{bad / 'val-000000.tar'}: 2 samples but the manifest lists 8 "
                            f"(truncated or replaced shard? re-run the stage that wrote it)")
