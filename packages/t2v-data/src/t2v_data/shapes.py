"""Synthetic coloured shapes: one fully visible object per clip on a static background, with captions and
ground-truth attributes. Deterministic: clip `index` depends only on (seed, index, config)."""

from __future__ import annotations

import math
import re
from functools import cached_property
from typing import Any

import numpy as np

from .palette import BACKGROUNDS, COLORS
from .prepare_config import (
    ATTRIBUTE_KEYS,
    DIRECTIONS,
    PrepareConfig,
    ShapesConfig,
    all_combos,
    is_drawable,
    is_held_out,
    is_valid_combo,
)
from .trajectory import Track, plan_track

SUPERSAMPLE = 4
STAR_INNER = 0.45  # inner/outer radius of the 5-pointed star
SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}


def motion_phrase(motion: str) -> str:
    if motion in DIRECTIONS:
        return "moving " + motion.replace("_", " and ")
    return {"grow": "growing", "shrink": "shrinking", "rotate": "rotating", "bounce": "bouncing"}[motion]


def caption(template: str, attrs: dict[str, Any]) -> str:
    text = template.format(
        shape=attrs["shape"],
        color=attrs["color"],
        motion=motion_phrase(attrs["motion"]),
        speed=SPEED_WORDS.get(attrs["speed"], attrs["speed"]),
        size=attrs["size"],
        background=attrs["background"],
    )
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a orange" -> "an orange"


def outline(shape: str, cx: float, cy: float, extent: float, angle: float) -> np.ndarray:
    """Polygon vertices (N, 2) of `shape` whose upright bounding box is `extent` wide, rotated by `angle`
    degrees about (cx, cy). Triangles and stars point up when upright."""
    if shape == "circle":
        a = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        pts = np.stack([np.cos(a), np.sin(a)], 1) * extent / 2
    elif shape == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * extent / 2
    elif shape == "triangle":
        r = extent / math.sqrt(3)
        a = np.radians([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(a), np.sin(a)], 1) * r
    elif shape == "star":
        r = extent / (2 * math.sin(math.radians(72)))
        a = np.radians(-90.0 + 36.0 * np.arange(10))
        radii = np.where(np.arange(10) % 2 == 0, r, r * STAR_INNER)
        pts = np.stack([np.cos(a), np.sin(a)], 1) * radii[:, None]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    th = math.radians(angle)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    return pts @ rot.T + [cx, cy]


def shape_box(shape: str):
    def box(extent: float, angle: float) -> tuple[float, float, float, float]:
        p = outline(shape, 0.0, 0.0, extent, angle)
        return p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()

    return box


def coverage(
    shape: str, cx: float, cy: float, extent: float, angle: float, width: int, height: int, ss: int = SUPERSAMPLE
) -> np.ndarray:
    """(H, W) fraction of each pixel covered by the shape, from ss x ss samples at subpixel centres
    (exact geometry: pixel i spans [i, i + 1), so an object inside [1, W - 1] never touches the border)."""
    pts = outline(shape, cx, cy, extent, angle)
    # only the pixels under the shape's bounding box need sampling
    x0, y0 = (max(int(np.floor(v)), 0) for v in pts.min(0))
    x1, y1 = min(int(np.ceil(pts[:, 0].max())), width), min(int(np.ceil(pts[:, 1].max())), height)
    x, y = np.meshgrid((np.arange(x0 * ss, x1 * ss) + 0.5) / ss, (np.arange(y0 * ss, y1 * ss) + 0.5) / ss)
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 < (extent / 2) ** 2
    else:  # even-odd rule, vectorised over the sample grid
        inside = np.zeros(x.shape, dtype=bool)
        for (ax, ay), (bx, by) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
            if ay == by:
                continue
            crosses = (ay > y) != (by > y)
            inside ^= crosses & (x < ax + (y - ay) * (bx - ax) / (by - ay))
    cover = np.zeros((height, width))
    cover[y0:y1, x0:x1] = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
    return cover


def render(
    shape: str, rgb, background_rgb, track: Track, width: int, height: int, antialias: bool = True
) -> np.ndarray:
    """uint8 (T, H, W, 3) video of the object following `track` (antialiased by 4x4 supersampling)."""
    ss = SUPERSAMPLE if antialias else 1
    fg, bg = np.asarray(rgb, np.float64), np.asarray(background_rgb, np.float64)
    frames = [
        coverage(shape, cx, cy, e, a, width, height, ss)[..., None] * (fg - bg) + bg
        for (cx, cy), e, a in zip(track.centers, track.extents, track.angles, strict=True)
    ]
    return np.stack(frames).round().astype(np.uint8)


class ShapesGenerator:
    """`generator.clip(index)` → (video uint8 (T,H,W,3), captions, attributes)."""

    def __init__(self, cfg: PrepareConfig, seed: int):
        self.cfg, self.shapes_cfg, self.seed = cfg, cfg.shapes, seed

    @cached_property
    def combos(self) -> list[dict[str, str]]:
        return [c for c in all_combos(self.shapes_cfg) if is_valid_combo(c, self.shapes_cfg)]

    def clip(self, index: int) -> tuple[np.ndarray, list[str], dict[str, Any]]:
        rng = np.random.default_rng([self.seed, index, 0x5A])
        combo = self.combos[int(rng.integers(len(self.combos)))]
        video, attrs = render_attributes(combo, self.cfg, rng)
        order = rng.permutation(len(self.shapes_cfg.templates))[: self.shapes_cfg.captions_per_clip]
        return video, [caption(self.shapes_cfg.templates[i], attrs) for i in order], attrs


def render_attributes(
    combo: dict[str, str], cfg: PrepareConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, Any]]:
    """Draw a clip for categorical attributes `combo` (shape, color, motion, speed, size, background);
    returns the video and the full ground-truth attribute dict."""
    sc = cfg.shapes
    side = min(cfg.h, cfg.w)
    extent = sc.sizes[combo["size"]] * side
    track = plan_track(
        combo["motion"], sc.speeds[combo["speed"]], extent, cfg.w, cfg.h, cfg.frames, rng, shape_box(combo["shape"])
    )
    rgb, bg = COLORS[combo["color"]], BACKGROUNDS[combo["background"]]
    video = render(combo["shape"], rgb, bg, track, cfg.w, cfg.h, antialias=sc.antialias)
    attrs: dict[str, Any] = dict(combo)
    attrs.update(
        color_rgb=list(rgb),
        background_rgb=list(bg),
        start=[round(float(v), 2) for v in track.centers[0]],
        end=[round(float(v), 2) for v in track.centers[-1]],
        size_px=round(float(extent), 2),
        extent_start=round(float(track.extents[0]), 2),
        extent_end=round(float(track.extents[-1]), 2),
        angle_start=round(float(track.angles[0]), 2),
        angle_end=round(float(track.angles[-1]), 2),
        **track.info,
    )
    return video, attrs


def heldout_prompts(cfg: PrepareConfig | ShapesConfig, n: int, seed: int) -> list[dict[str, Any]]:
    """`n` evaluation prompts: [{"caption": str, "attributes": {shape, color, color_rgb, motion, speed, size,
    background, background_rgb}}]. Drawn from the held-out combinations when `holdout` is set (never seen in
    training), else from the whole attribute space; captions use the first template. Deterministic in seed."""
    sc = cfg.shapes if isinstance(cfg, PrepareConfig) else cfg
    pool = [c for c in all_combos(sc) if is_drawable(c) and (is_held_out(c, sc) or not sc.holdout)]
    if not pool:
        raise ValueError("no held-out combination is drawable (check shapes.holdout against the backgrounds)")
    rng = np.random.default_rng([seed, 0xE7A1])
    picks = rng.permutation(len(pool)) if n <= len(pool) else rng.integers(len(pool), size=n)
    out = []
    for i in picks[:n]:
        attrs: dict[str, Any] = {k: pool[int(i)][k] for k in ATTRIBUTE_KEYS}
        attrs["color_rgb"] = list(COLORS[attrs["color"]])
        attrs["background_rgb"] = list(BACKGROUNDS[attrs["background"]])
        out.append({"caption": caption(sc.templates[0], attrs), "attributes": attrs})
    return out
