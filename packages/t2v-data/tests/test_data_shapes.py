from collections import Counter

import numpy as np
import pytest

from t2v_data.palette import COLORS
from t2v_data.prepare_config import prepare_config
from t2v_data.shapes import ShapesGenerator, all_combos, heldout_prompts, is_drawable, is_held_out


def gen(seed=0, **data):
    return ShapesGenerator(prepare_config(data), seed)


@pytest.mark.parametrize("size,frames", [(32, 8), (64, 16)])
def test_geometry_visibility_and_static_background(size, frames):
    g = gen(size=size, frames=frames)
    for i in range(60):
        video, captions, a = g.clip(i)
        assert video.shape == (frames, size, size, 3) and video.dtype == np.uint8
        bg = np.array(a["background_rgb"], np.uint8)
        border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
        assert (border == bg).all(), f"clip {i}: object touches the edge or background changes"
        # the object (pixels of exactly its colour) is present in every frame, and as large as planned
        solid = (video == np.array(a["color_rgb"], np.uint8)).all(-1).sum(axis=(1, 2))
        smallest = min(a["extent_start"], a["extent_end"])
        assert solid.min() >= 0.15 * smallest**2, f"clip {i}: object missing/tiny in some frame"
        if a["motion"] not in ("grow", "shrink"):
            assert solid.max() <= 1.5 * solid.min(), f"clip {i}: object area jumps"
        assert a["color"] in captions[0] and a["shape"] in captions[0]


def test_deterministic_by_seed_and_index():
    a, b, c = gen(seed=1), gen(seed=1), gen(seed=2)
    assert np.array_equal(a.clip(5)[0], b.clip(5)[0]) and a.clip(5)[2] == b.clip(5)[2]
    assert any(not np.array_equal(a.clip(i)[0], c.clip(i)[0]) for i in range(5))


def test_rotation_is_really_drawn_and_stars_are_not_squares():
    g = gen(shapes={"shapes": ["star"], "motions": ["rotate"]})
    video, _, a = g.clip(0)
    assert a["motion"] == "rotate" and abs(a["angle_end"] - a["angle_start"]) >= 60
    assert not np.array_equal(video[0], video[-1])
    fill = (video[0] != video[0, 0, 0]).any(-1)
    ys, xs = np.nonzero(fill)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    assert fill.sum() < 0.7 * box  # a star leaves much of its bounding box empty


def test_holdout_never_generated_and_used_for_prompts():
    holdout = [{"color": "red", "shape": "star"}, {"color": "blue", "motion": "left"}]
    cfg = prepare_config({"shapes": {"holdout": holdout}})
    g = ShapesGenerator(cfg, 0)
    seen = [g.clip(i)[2] for i in range(400)]
    assert not any(is_held_out(a, cfg.shapes) for a in seen)
    assert any(a["color"] == "red" for a in seen) and any(a["shape"] == "star" for a in seen)
    prompts = heldout_prompts(cfg, 20, seed=0)
    assert len(prompts) == 20 and all(is_held_out(p["attributes"], cfg.shapes) for p in prompts)
    assert prompts == heldout_prompts(cfg, 20, seed=0)
    p = prompts[0]
    assert p["attributes"]["color"] in p["caption"] and p["attributes"]["color_rgb"] == list(
        COLORS[p["attributes"]["color"]]
    )


def test_heldout_prompts_cover_every_combination_evenly():
    holdout = [{"color": "red", "shape": "star"}, {"shape": "triangle", "motion": "down"}]
    cfg = prepare_config({"shapes": {"holdout": holdout, "speeds": {"fast": 0.5}, "sizes": {"large": 0.4},
                                     "backgrounds": ["black"]}})
    pool = {tuple(sorted((k, v) for k, v in c.items() if k in ("shape", "color", "motion")))
            for c in all_combos(cfg.shapes) if is_drawable(c) and is_held_out(c, cfg.shapes)}

    def counts(n):
        keys = [tuple(sorted((k, p["attributes"][k]) for k in ("shape", "color", "motion")))
                for p in heldout_prompts(cfg, n, seed=3)]
        assert set(keys) <= pool
        return Counter(keys)

    few = counts(len(pool) - 1)
    assert len(few) == len(pool) - 1 and set(few.values()) == {1}  # no repeats while the pool lasts
    many = counts(2 * len(pool) + 5)
    assert set(many) == pool and sorted(set(many.values())) == [2, 3] and sum(v == 3 for v in many.values()) == 5


def test_prompts_from_full_space_without_holdout():
    cfg = prepare_config({"shapes": {"colors": ["orange", "cyan"], "motions": ["left", "up"]}})
    prompts = heldout_prompts(cfg.shapes, 50, seed=1)
    assert {p["attributes"]["color"] for p in prompts} == {"orange", "cyan"}
    assert {p["attributes"]["motion"] for p in prompts} == {"left", "up"}
    assert any(p["caption"].startswith("an orange") for p in prompts)
