"""The training sample stream over pre-embedded shards (t2v_data.shards), reproducible from a saved position.

Each reader slot (one per rank x DataLoader worker) reads an endless sequence of epochs. Epoch e shuffles the shard
list with (seed, e); a slot takes every `num_slots`-th shard from `slot` on (as webdataset's split_by_node then
split_by_worker), or, when there are fewer shards than slots, every `num_slots`-th sample of all shards. Samples then
pass through webdataset's shuffle buffer and get a random caption row, all seeded by (seed, epoch, slot). The stream
is thus a pure function of (seed, slot, position): resuming skips `position` samples without decoding their videos.

The DataLoader hands out batches round-robin over its workers, starting at worker 0, so after `n` batches worker w has
made len(range(w, n, workers)) of them and batch n is due from worker n % workers. `train_loader(..., batches_done=n)`
restarts there: the new loader's worker i plays the original worker (i + n) % workers from its skip-ahead point.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from t2v_data.shards import Manifest, ShardRef, decode_sample, read_shard
from t2v_model.errors import DataError


def read_samples(refs: list[ShardRef]) -> Iterator[dict[str, Any]]:
    """The undecoded samples of shards `refs`, in order: {"key", "members", "where"} (damaged or miscounted shards
    are a DataError naming them: t2v_data.shards.read_shard)."""
    for ref in refs:
        for key, members in read_shard(ref):
            yield {"key": key, "members": members, "where": ref.path}


def decode(raw: dict[str, Any], manifest: Manifest, caption_row: int | None, flip: bool) -> dict[str, Any]:
    """One sample, checked against the manifest -> {"video": uint8 (T, H, W, C), "text": float32 (D,), "caption",
    "meta"} plus "tokens" float32 (L, D) and "mask" bool (L,) when the shards carry per-token embeddings.
    `caption_row` None picks caption 0 (validation); otherwise it is taken modulo the number of captions."""
    s = decode_sample(raw["key"], raw["members"], manifest, raw["where"])
    row = 0 if caption_row is None else caption_row % len(s.captions)
    video = s.video[:, :, ::-1] if flip else s.video
    out = {"video": torch.from_numpy(np.ascontiguousarray(video)),
           "text": torch.from_numpy(s.text[row].astype(np.float32)), "caption": s.captions[row], "meta": s.meta}
    if s.tokens is not None:
        out["tokens"] = torch.from_numpy(s.tokens[row].astype(np.float32))
        out["mask"] = torch.from_numpy(s.mask[row].astype(bool))
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {"video": torch.stack([s["video"] for s in samples]), "text": torch.stack([s["text"] for s in samples]),
             "caption": [s["caption"] for s in samples], "meta": [s["meta"] for s in samples]}
    if "tokens" in samples[0]:
        # each sample's tokens are padded to its own longest caption: pad to the batch's, then drop the columns no
        # chosen caption uses
        width = max(len(s["mask"]) for s in samples)
        mask = torch.stack([F.pad(s["mask"], (0, width - len(s["mask"]))) for s in samples])
        tokens = torch.stack([F.pad(s["tokens"], (0, 0, 0, width - len(s["tokens"]))) for s in samples])
        length = int(mask.any(0).nonzero().max()) + 1
        batch["tokens"], batch["mask"] = tokens[:, :length], mask[:, :length]
    return batch


def text_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor | None]:
    """The conditioning keyword arguments of the model for a batch: text, tokens, token_mask."""
    to = lambda key: batch[key].to(device, non_blocking=True) if key in batch else None  # noqa: E731
    return {"text": to("text"), "tokens": to("tokens"), "token_mask": to("mask")}


class TrainStream(IterableDataset):
    """Endless, shuffled batches of the train split for one rank; on resume, `skip[w]` = batches the original worker
    w already made and `rotate` = which original worker the new worker 0 stands for."""

    def __init__(self, manifest: Manifest, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle_buffer: int = 256, hflip: bool = False, skip: list[int] | None = None, rotate: int = 0):
        self.manifest, self.shards = manifest, manifest.shards("train")
        if not self.shards:
            raise DataError(f"{manifest.path}: no train shards")
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.hflip = shuffle_buffer, hflip
        self.skip, self.rotate = skip or [0], rotate

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = ((info.id + self.rotate) % info.num_workers, info.num_workers) if info else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        stream = self.samples(slot, slots)
        try:
            for _ in range(self.skip[worker] * self.batch_size):
                next(stream)
            while True:
                yield collate([self.decode(next(stream)) for _ in range(self.batch_size)])
        except DataError as e:
            if info is None:
                raise
            # raised in a worker, it would reach the main process as a traceback text: send the message instead
            yield {"error": str(e)}

    def samples(self, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples of this slot, epoch after epoch, each tagged with its caption row and flip."""
        epoch = 0
        while True:
            order = list(self.shards)
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
            if len(order) >= slots:
                mine, keep = order[slot::slots], None
            else:
                mine, keep = order, slot
            raw = read_samples(mine)
            if keep is not None:
                raw = (s for i, s in enumerate(raw) if i % slots == keep)
            rng = random.Random(f"{self.seed}-{epoch}-{slot}")
            count = 0
            for sample in wds.shuffle(self.shuffle_buffer, min(64, self.shuffle_buffer), rng=rng)(raw):
                sample["_row"] = rng.randrange(1 << 30)
                sample["_flip"] = self.hflip and rng.random() < 0.5
                count += 1
                yield sample
            if count == 0:
                raise DataError(f"train shards yield no samples for reader {slot} of {slots}")
            epoch += 1

    def decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        return decode(sample, self.manifest, sample["_row"], sample["_flip"])


def batches_per_worker(batches_done: int, num_workers: int) -> list[int]:
    workers = max(num_workers, 1)
    return [len(range(w, batches_done, workers)) for w in range(workers)]


def train_loader(manifest: Manifest, *, batch_size: int, seed: int, rank: int, world_size: int, num_workers: int,
                 shuffle_buffer: int, hflip: bool, batches_done: int, pin_memory: bool) -> Loader:
    stream = TrainStream(manifest, batch_size=batch_size, seed=seed, rank=rank, world_size=world_size,
                         shuffle_buffer=shuffle_buffer, hflip=hflip,
                         skip=batches_per_worker(batches_done, num_workers), rotate=batches_done % max(num_workers, 1))
    return Loader(DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                             persistent_workers=False, prefetch_factor=4 if num_workers else None))


class Loader:
    """A DataLoader over a TrainStream that raises the DataError a worker reported (see TrainStream.__iter__)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            if "error" in batch:
                raise DataError(batch["error"])
            yield batch


def val_batches(manifest: Manifest, batch_size: int, limit: int, split: str = "val") -> Iterator[dict[str, Any]]:
    """The first `limit` batches of `split` in stored order, caption 0 (the same every time)."""
    batch: list[dict[str, Any]] = []
    done = 0
    for raw in read_samples(manifest.shards(split)):
        batch.append(decode(raw, manifest, None, False))
        if len(batch) == batch_size:
            yield collate(batch)
            batch, done = [], done + 1
            if done == limit:
                return
    if batch:
        yield collate(batch)


def to_model_input(video: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> float (B, C, T, H, W) in [-1, 1] on `device`."""
    x = video.to(device, non_blocking=True).permute(0, 4, 1, 2, 3).float()
    return x / 127.5 - 1.0
