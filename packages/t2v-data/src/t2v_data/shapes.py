"""Synthetic coloured shapes: one fully visible object per clip on a static background, with captions and
ground-truth attributes. Deterministic: clip `index` depends only on (seed, index, config)."""

from __future__ import annotations

import itertools
import math
import re
import string
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from t2v_model.errors import ConfigError

from .palette import BACKGROUNDS, COLORS, contrasts
from .sources import SyntheticSource
from .trajectory import Track, plan_track

if TYPE_CHECKING:
    from .prepare_config import PrepareConfig

SHAPES = ("circle", "square", "triangle", "star")
DIRECTIONS = ("left", "right", "up", "down", "up_left", "up_right", "down_left", "down_right")
MOTIONS = DIRECTIONS + ("grow", "shrink", "rotate", "bounce")
ATTRIBUTE_KEYS = ("shape", "color", "motion", "speed", "size", "background")
TEMPLATE_FIELDS = {"shape", "color", "motion", "speed", "size", "background"}

DEFAULT_TEMPLATES = [
    "a {color} {shape} {motion} on a {background} background",
    "a {size} {color} {shape} {motion}",
    "a {color} {shape} {motion} {speed}",
]

MAX_FILL = 0.92  # object extent + travel may use at most this fraction of the canvas side


@dataclass
class ShapesConfig:
    shapes: list[str] = field(default_factory=lambda: list(SHAPES))
    colors: list[str] = field(default_factory=lambda: list(COLORS))
    backgrounds: list[str] = field(default_factory=lambda: ["black"])
    motions: list[str] = field(default_factory=lambda: list(MOTIONS))
    # distance travelled over the whole clip, as a fraction of the canvas side (rotation: 240 deg per 1.0)
    speeds: dict[str, float] = field(default_factory=lambda: {"slow": 0.3, "fast": 0.5})
    # object extent (bounding box side when upright) as a fraction of the canvas side
    sizes: dict[str, float] = field(default_factory=lambda: {"small": 0.32, "large": 0.42})
    # attribute combinations never generated, e.g. [{color: red, shape: star}, {color: blue, motion: left}]
    holdout: list[dict[str, str]] = field(default_factory=list)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    captions_per_clip: int = 1
    antialias: bool = True

    def validate(self) -> None:
        check_names("shapes", self.shapes, SHAPES)
        check_names("colors", self.colors, COLORS)
        check_names("backgrounds", self.backgrounds, BACKGROUNDS)
        check_names("motions", self.motions, MOTIONS)
        check_fractions("speeds", self.speeds)
        check_fractions("sizes", self.sizes)
        if max(self.sizes.values()) + max(self.speeds.values()) > MAX_FILL:
            raise ConfigError(
                f"speeds: largest size + largest speed must be <= {MAX_FILL} of the canvas "
                f"so the object never leaves it, got {max(self.sizes.values())} + {max(self.speeds.values())}"
            )
        if not any(contrasts(c, b) for c in self.colors for b in self.backgrounds):
            raise ConfigError("backgrounds: every colour is too close to every background")
        allowed = {
            "shape": self.shapes,
            "color": self.colors,
            "motion": self.motions,
            "speed": list(self.speeds),
            "size": list(self.sizes),
            "background": self.backgrounds,
        }
        for i, combo in enumerate(self.holdout):
            if not combo:
                raise ConfigError(f"holdout[{i}]: empty combination would hold out everything")
            for key, value in combo.items():
                if key not in allowed:
                    raise ConfigError(f"holdout[{i}].{key}: unknown attribute (known: {', '.join(ATTRIBUTE_KEYS)})")
                if value not in allowed[key]:
                    raise ConfigError(f"holdout[{i}].{key}: {value!r} is not in shapes.{key}s")
        if not self.templates:
            raise ConfigError("templates: need at least one caption template")
        for i, t in enumerate(self.templates):
            names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
            if names - TEMPLATE_FIELDS:
                raise ConfigError(
                    f"templates[{i}]: unknown field {{{sorted(names - TEMPLATE_FIELDS)[0]}}} "
                    f"(known: {', '.join(sorted(TEMPLATE_FIELDS))})"
                )
            if not {"color", "shape", "motion"} <= names:
                raise ConfigError(f"templates[{i}]: must mention {{color}}, {{shape}} and {{motion}}")
        if not 1 <= self.captions_per_clip <= len(self.templates):
            raise ConfigError(f"captions_per_clip: must be between 1 and {len(self.templates)} (number of templates)")
        if not any(is_valid_combo(c, self) for c in all_combos(self)):
            raise ConfigError("holdout: holds out every possible combination")


def all_combos(cfg: ShapesConfig):
    """Every categorical attribute combination of the configured space, as dicts."""
    for values in itertools.product(cfg.shapes, cfg.colors, cfg.motions, cfg.speeds, cfg.sizes, cfg.backgrounds):
        yield dict(zip(ATTRIBUTE_KEYS, values, strict=True))


def is_held_out(attrs: dict[str, Any], cfg: ShapesConfig) -> bool:
    return any(all(attrs.get(k) == v for k, v in combo.items()) for combo in cfg.holdout)


def is_drawable(attrs: dict[str, Any]) -> bool:
    """Visible contrast, and not a rotating circle (indistinguishable from a static one, so never made)."""
    if attrs["shape"] == "circle" and attrs["motion"] == "rotate":
        return False
    return contrasts(attrs["color"], attrs["background"])


def is_valid_combo(attrs: dict[str, Any], cfg: ShapesConfig) -> bool:
    """Generated for training: drawable and not held out."""
    return is_drawable(attrs) and not is_held_out(attrs, cfg)


def check_name(where: str, value: str, known) -> None:
    if value not in known:
        raise ConfigError(f"{where}: unknown value {value!r} (known: {', '.join(known)})")


def check_names(where: str, values: list[str], known) -> None:
    if not values:
        raise ConfigError(f"{where}: must not be empty")
    for i, v in enumerate(values):
        check_name(f"{where}[{i}]", v, known)
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: duplicate entries")


def check_fractions(where: str, values: dict[str, float]) -> None:
    if not values:
        raise ConfigError(f"{where}: must not be empty")
    for name, v in values.items():
        if not 0.0 < v < 1.0:
            raise ConfigError(f"{where}.{name}: must be a fraction in (0, 1), got {v}")


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
    training), else from the whole attribute space; captions use the first template. Deterministic in seed.
    Without repeats while n fits the pool; beyond it every combination n // len(pool) times and the rest distinct,
    so that no combination is left out (32 draws with replacement from the quickstart's 23 held-out combinations
    miss ~6 of them and score others three times)."""
    sc = cfg if isinstance(cfg, ShapesConfig) else cfg.shapes
    pool = [c for c in all_combos(sc) if is_drawable(c) and (is_held_out(c, sc) or not sc.holdout)]
    if not pool:
        raise ValueError("no held-out combination is drawable (check shapes.holdout against the backgrounds)")
    rng = np.random.default_rng([seed, 0xE7A1])
    rounds = [rng.permutation(len(pool)) for _ in range(max(1, -(-n // len(pool))))]
    picks = np.concatenate(rounds)
    out = []
    for i in picks[:n]:
        attrs: dict[str, Any] = {k: pool[int(i)][k] for k in ATTRIBUTE_KEYS}
        attrs["color_rgb"] = list(COLORS[attrs["color"]])
        attrs["background_rgb"] = list(BACKGROUNDS[attrs["background"]])
        out.append({"caption": caption(sc.templates[0], attrs), "attributes": attrs})
    return out


class Shapes(SyntheticSource):
    name = "shapes"
    config = ShapesConfig

    def generator(self, cfg: PrepareConfig, seed: int) -> ShapesGenerator:
        return ShapesGenerator(cfg, seed)


SOURCE = Shapes()
