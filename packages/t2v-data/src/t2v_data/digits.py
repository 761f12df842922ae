"""Moving digits (MNIST-style): one digit moving or bouncing on a static canvas, fully visible throughout.

Digit images come from MNIST IDX files in `digits.mnist_dir` (train-images-idx3-ubyte[.gz] +
train-labels-idx1-ubyte[.gz]) or, offline by default, from scikit-learn's bundled 8x8 digits, upscaled."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from t2v_model.errors import ConfigError, DataError

from .palette import BACKGROUNDS, COLORS
from .shapes import DIRECTIONS, MAX_FILL, check_fractions, check_name, check_names, motion_phrase
from .sources import SyntheticSource
from .trajectory import plan_track

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig


@dataclass
class DigitsConfig:
    # folder with MNIST IDX files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]);
    # None = scikit-learn's bundled 8x8 digits, upscaled (offline)
    mnist_dir: str | None = None
    motions: list[str] = field(default_factory=lambda: list(DIRECTIONS) + ["bounce"])
    speeds: dict[str, float] = field(default_factory=lambda: {"slow": 0.3, "fast": 0.5})
    digit_size: float = 0.42  # digit box side as a fraction of the canvas side (27 px on 64)
    color: str = "white"
    background: str = "black"

    def validate(self) -> None:
        check_names("motions", self.motions, DIRECTIONS + ("bounce",))
        check_fractions("speeds", self.speeds)
        if not 0.1 <= self.digit_size <= 0.8:
            raise ConfigError(f"digit_size: must be in [0.1, 0.8], got {self.digit_size}")
        if self.digit_size + max(self.speeds.values()) > MAX_FILL:
            raise ConfigError(f"speeds: digit_size + largest speed must be <= {MAX_FILL}")
        check_name("color", self.color, COLORS)
        check_name("background", self.background, BACKGROUNDS)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) as a uint8 array; DataError naming the file when malformed."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def load_digit_images(mnist_dir: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(images float32 (N, h, w) in [0, 1], labels int (N,), dataset name)."""
    if mnist_dir is None:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        d = load_digits()
        return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64), "sklearn-digits-8x8"
    root = Path(mnist_dir)
    if not root.is_dir():
        raise DataError(f"{root}: MNIST directory not found (data.digits.mnist_dir)")

    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (root / name).is_file():
                return root / name
        raise DataError(f"{root / stem}: not found (nor .gz)")

    images = read_idx(find("train-images-idx3-ubyte"))
    labels = read_idx(find("train-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {images.shape} and labels {labels.shape} do not match")
    return images.astype(np.float32) / 255.0, labels.astype(np.int64), "mnist"


class DigitsGenerator:
    """`generator.clip(index)` → (video uint8 (T,H,W,3), captions, attributes)."""

    def __init__(self, cfg: PrepareConfig, seed: int):
        self.cfg, self.dc, self.seed = cfg, cfg.digits, seed

    @cached_property
    def dataset(self) -> tuple[np.ndarray, np.ndarray, str]:
        return load_digit_images(self.dc.mnist_dir)

    def clip(self, index: int) -> tuple[np.ndarray, list[str], dict[str, Any]]:
        images, labels, dataset = self.dataset
        rng = np.random.default_rng([self.seed, index, 0xD1])
        pick = int(rng.integers(len(images)))
        motion = str(rng.choice(self.dc.motions))
        speed = str(rng.choice(list(self.dc.speeds)))
        cfg = self.cfg
        side = max(4, round(self.dc.digit_size * min(cfg.h, cfg.w)))
        half = side / 2

        def box(extent: float, angle: float):
            return -half, half, -half, half

        track = plan_track(motion, self.dc.speeds[speed], side, cfg.w, cfg.h, cfg.frames, rng, box)
        glyph = (
            np.asarray(
                Image.fromarray((images[pick] * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC),
                dtype=np.float32,
            )[..., None]
            / 255.0
        )
        fg, bg = np.array(COLORS[self.dc.color], np.float32), np.array(BACKGROUNDS[self.dc.background], np.float32)
        video = np.empty((cfg.frames, cfg.h, cfg.w, 3), dtype=np.uint8)
        for t, (cx, cy) in enumerate(track.centers):
            x0, y0 = int(round(cx - half)), int(round(cy - half))
            alpha = np.zeros((cfg.h, cfg.w, 1), np.float32)
            alpha[y0 : y0 + side, x0 : x0 + side] = glyph
            video[t] = np.clip(bg + alpha * (fg - bg), 0, 255).round().astype(np.uint8)
        digit = int(labels[pick])
        attrs = {
            "digit": digit,
            "motion": motion,
            "speed": speed,
            "color": self.dc.color,
            "background": self.dc.background,
            "dataset": dataset,
            "image_index": pick,
            "size_px": side,
            "start": [round(float(v), 2) for v in track.centers[0]],
            "end": [round(float(v), 2) for v in track.centers[-1]],
            **track.info,
        }
        text = f"the digit {digit} {motion_phrase(motion)}"
        return video, [text], attrs


class Digits(SyntheticSource):
    name = "digits"
    config = DigitsConfig

    def generator(self, cfg: PrepareConfig, seed: int) -> DigitsGenerator:
        return DigitsGenerator(cfg, seed)


SOURCE = Digits()
