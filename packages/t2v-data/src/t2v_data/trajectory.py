"""Per-frame placement (centre, extent, angle) of one object so that it stays fully inside the canvas in
every frame. Shared by the shapes and digits generators; `box(extent, angle)` gives the object's bounding
offsets around its centre."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# image coordinates: x to the right, y down, so "up" is -y
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    # 0.75 per axis: the diagonal path is ~1.06x a straight one, yet fits in the same canvas
    "up_left": (-0.75, -0.75),
    "up_right": (0.75, -0.75),
    "down_left": (-0.75, 0.75),
    "down_right": (0.75, 0.75),
}
BOUNCE_REACH = 0.75  # bounce: out-and-back excursion as a fraction of the travel
GROW_RATIO_PER_TRAVEL = 2.0  # grow/shrink: extent ratio = 1 + 2 * travel (slow 0.3 -> 1.6x, fast 0.5 -> 2x)
GROW_MAX = 0.8  # largest extent while growing/shrinking, fraction of the canvas side
ROTATE_DEGREES_PER_TRAVEL = 240.0
MARGIN = 1.0  # pixels kept free at the canvas edge (room for antialiased edges)

Box = Callable[[float, float], tuple[float, float, float, float]]  # (extent, angle) -> (x0, x1, y0, y1)


@dataclass
class Track:
    centers: np.ndarray  # (T, 2) float pixel coordinates (x, y); pixel i covers [i, i + 1)
    extents: np.ndarray  # (T,) object extent in pixels
    angles: np.ndarray  # (T,) degrees
    info: dict  # ground truth extras recorded in meta.json


def plan_track(
    motion: str, travel: float, extent: float, width: int, height: int, frames: int, rng: np.random.Generator, box: Box
) -> Track:
    """Plan `motion` with `travel` (fraction of the canvas side) for an object of `extent` pixels."""
    side = min(width, height)
    t = np.linspace(0.0, 1.0, frames)
    travel_px = travel * side
    extents = np.full(frames, float(extent))
    angles = np.zeros(frames)
    offsets = np.zeros((frames, 2))
    info: dict = {}
    if motion in DIRECTION_VECTORS:
        offsets = np.outer(t, DIRECTION_VECTORS[motion]) * travel_px
    elif motion == "bounce":
        toward = str(rng.choice(["left", "right", "up", "down"]))
        info["bounce_toward"] = toward
        offsets = np.outer(1.0 - np.abs(1.0 - 2.0 * t), DIRECTION_VECTORS[toward]) * BOUNCE_REACH * travel_px
    elif motion in ("grow", "shrink"):
        ratio = 1.0 + GROW_RATIO_PER_TRAVEL * travel
        big = min(1.5 * extent, GROW_MAX * side)
        grown = big / ratio * ratio**t
        extents = grown if motion == "grow" else grown[::-1].copy()
    elif motion == "rotate":
        sign = 1.0 if rng.random() < 0.5 else -1.0
        info["rotation"] = "clockwise" if sign > 0 else "counterclockwise"
        angles = float(rng.uniform(0.0, 360.0)) + sign * ROTATE_DEGREES_PER_TRAVEL * travel * t
    elif motion != "static":
        raise ValueError(f"unknown motion {motion!r}")

    boxes = np.array([box(e, a) for e, a in zip(extents, angles, strict=True)])  # (T, 4)
    lo = np.array([boxes[:, 0].min(), boxes[:, 2].min()])
    hi = np.array([boxes[:, 1].max(), boxes[:, 3].max()])
    size = np.array([width, height], dtype=np.float64)
    span = offsets.max(0) - offsets.min(0)
    room = size - 2 * MARGIN - (hi - lo)
    if np.any(span > room + 1e-9):  # only for extreme configs: shorten the path rather than leave the canvas
        offsets = offsets * float(np.min(np.where(span > 0, np.clip(room, 0, None) / np.maximum(span, 1e-9), 1.0)))
        info["shortened"] = True
    first = MARGIN - lo - offsets.min(0)
    last = size - MARGIN - hi - offsets.max(0)
    if motion == "bounce":  # start as far from the wall as possible, so the object touches it mid-clip
        d = np.array(DIRECTION_VECTORS[info["bounce_toward"]])
        start = np.where(
            d > 0, last, np.where(d < 0, first, (first + last) / 2 + rng.uniform(-0.25, 0.25, 2) * (last - first))
        )
    else:
        start = first + rng.random(2) * np.maximum(last - first, 0.0)
    return Track(centers=start + offsets, extents=extents, angles=angles, info=info)
