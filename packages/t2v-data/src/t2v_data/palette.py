"""Named colours shared by the shapes generator and the judge.

Object colours are saturated and at least ~115 apart in RGB so the nearest-colour judge stays unambiguous
even on noisy generated pixels; backgrounds are dark/neutral and kept >= MIN_CONTRAST away from the object."""

from __future__ import annotations

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 140, 0),
    "yellow": (255, 255, 0),
    "green": (0, 200, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "purple": (140, 0, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "gray": (110, 110, 110),
    "navy": (0, 0, 90),
    "white": (255, 255, 255),
}

MIN_CONTRAST = 160.0  # minimum RGB distance between an object colour and its background


def rgb_distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def contrasts(color: str, background: str) -> bool:
    return rgb_distance(COLORS[color], BACKGROUNDS[background]) >= MIN_CONTRAST


def nearest(rgb, names: dict[str, tuple[int, int, int]]) -> str:
    """Name of the palette entry closest to `rgb` (Euclidean RGB)."""
    return min(names, key=lambda n: rgb_distance(rgb, names[n]))
