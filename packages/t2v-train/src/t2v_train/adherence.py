"""Scoring generated videos against the attributes their captions name (t2v_data.judge)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from t2v_data.judge import judge_matches, judge_video


def score(videos: torch.Tensor, attributes: list[dict[str, Any]], space: dict[str, list[str]] | None = None):
    """Judge each generated video against its prompt's attributes. Returns (per-video rows, accuracy per attribute)
    for the attributes the prompts name (colour, motion, shape). `space` restricts the judge's answers."""
    space = space or {}
    rows = []
    for video, attrs in zip(videos.numpy(), attributes):
        j = judge_video(video, attrs.get("background_rgb"), colors=space.get("colors"),
                        motions=space.get("motions"), shapes=space.get("shapes"))
        ok = judge_matches(attrs, j)
        rows.append({"want": {k: attrs.get(k) for k in ok}, "got": {k: getattr(j, k) for k in ok}, "ok": ok,
                     "displacement": [round(v, 2) for v in j.displacement]})
    # each attribute over the prompts that name it: a prompt without a shape is no shape miss
    accuracy = {k: float(np.mean([r["ok"][k] for r, a in zip(rows, attributes) if a.get(k) is not None]))
                for k in ("color", "motion", "shape") if any(a.get(k) is not None for a in attributes)}
    return rows, accuracy


def confusion(rows: list[dict[str, Any]], key: str, values: list[str]) -> dict[str, dict[str, int]]:
    """{asked: {read: count}} over the rows whose prompt names `key`; the judge reads None when it finds no object."""
    table = {v: {w: 0 for w in [*values, None]} for v in values}
    for r in rows:
        want, got = r["want"].get(key), r["got"].get(key)
        if want in table:
            table[want][got if got in table[want] else None] += 1
    return {want: {str(got): n for got, n in reads.items()} for want, reads in table.items()}


def chance_levels(space: dict[str, list[str]] | None) -> dict[str, float]:
    """Accuracy of answering at random within the attribute space (1 / number of values), per attribute."""
    space = space or {}
    return {k: 1.0 / len(space[k + "s"]) for k in ("color", "motion", "shape") if space.get(k + "s")}


def sanity_stats(videos: torch.Tensor) -> dict[str, float]:
    """Mean motion energy (mean |frame difference|, 0-255) and background stability (std over time of the border
    pixels, 0-255; ~0 for the synthetic data's static backgrounds)."""
    v = videos.float()
    energy = (v[:, 1:] - v[:, :-1]).abs().mean().item()
    border = torch.cat([v[:, :, 0], v[:, :, -1], v[:, :, :, 0], v[:, :, :, -1]], dim=2)  # (B, T, 2H+2W, C)
    return {"motion_energy": round(energy, 3), "background_std": round(border.std(dim=1).mean().item(), 3)}


def attribute_space(raw: dict[str, Any]) -> dict[str, list[str]] | None:
    """The colours/motions/shapes of a shapes `data:` section (what the judge may answer), else None."""
    data = raw.get("data") or {}
    if data.get("source", "shapes") != "shapes":
        return None
    from t2v_data.prepare_config import prepare_config

    sc = prepare_config(data).shapes
    return {"colors": list(sc.colors), "motions": list(sc.motions), "shapes": list(sc.shapes)}
