"""Prompt adherence of a trained checkpoint: generate videos for synthetic prompts (combinations held out of training
when data.shapes.holdout names some), read their colour and
motion back with the pixel judge (t2v_data.judge), and report accuracy per attribute, val loss and sanity stats.

    result = evaluate(load_experiment("configs/quickstart.yaml"))   # also writes <out_dir>/eval/
    print(format_table(result))
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from t2v_data.config import build
from t2v_data.prepare_config import PrepareConfig
from t2v_data.shapes import heldout_prompts
from t2v_data.shards import write_json_atomic
from t2v_model.pipeline import TextToVideo
from t2v_model.video_io import save_grid

from .adherence import attribute_space, sanity_stats, score
from .config import Experiment
from .data import shard_list
from .distributed import pick_device
from .trainer import validation_loss


def evaluate(exp: Experiment, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    cfg = exp.evaluate
    ckpt_dir = Path(checkpoint or cfg.checkpoint or exp.out_dir / "model")
    device = pick_device(cfg.device, key="evaluate.device")
    pipe = TextToVideo.from_pretrained(ckpt_dir, device=device)
    space = attribute_space(exp.raw)
    if space is None:
        raise ValueError(f"data.source: prompt adherence needs the synthetic shapes source, got "
                         f"{(exp.raw.get('data') or {}).get('source')!r}")
    data_cfg = build(PrepareConfig, exp.raw.get("data"), "data")
    if pipe.card.unet != exp.model.unet:
        print(f"warning: {ckpt_dir} was trained with another model.unet than {exp.name}'s config; scoring it anyway",
              file=sys.stderr)
    prompts = heldout_prompts(data_cfg, cfg.num_prompts, cfg.seed)
    captions = [p["caption"] for p in prompts]
    start = time.perf_counter()
    emb = pipe.embed(captions)
    cut = lambda v, i: None if v is None else v[i:i + cfg.batch_size]  # noqa: E731
    batches = range(0, len(captions), cfg.batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch")
    videos = torch.cat([pipe.generate_from_embeddings(emb.pooled[i:i + cfg.batch_size], tokens=cut(emb.tokens, i),
                                                      token_mask=cut(emb.mask, i), steps=cfg.steps,
                                                      guidance=cfg.guidance, seed=cfg.seed + i, sampler=cfg.sampler)
                        for i in batches])
    seconds = time.perf_counter() - start
    rows, accuracy = score(videos, [p["attributes"] for p in prompts], space)
    val_loss = float("nan")
    if cfg.val_batches and exp.data_dir.is_dir():
        val_loss = validation_loss(pipe.model, pipe.diffusion, shard_list(exp.data_dir, "val"),
                                   exp.train.batch_size, cfg.val_batches, device, exp.seed)
    out = exp.out_dir / "eval"
    save_grid(out / "samples.gif", videos[:16], fps=pipe.card.data.fps, scale=4)
    result = {"checkpoint": str(ckpt_dir), "prompts": len(prompts), "held_out": bool(data_cfg.shapes.holdout),
              "sampler": cfg.sampler, "steps": cfg.steps,
              "guidance": cfg.guidance, "accuracy": accuracy, "targets": cfg.targets,
              "passed": all(accuracy.get(k, 0.0) >= v for k, v in cfg.targets.items()),
              "val_loss": val_loss if math.isfinite(val_loss) else None, **sanity_stats(videos),
              "seconds": round(seconds, 1),
              "videos": [{"caption": c, **r} for c, r in zip(captions, rows)]}
    write_json_atomic(out / "results.json", result)
    return result


def format_table(result: dict[str, Any]) -> str:
    kind = "held-out" if result.get("held_out") else "in-distribution (no data.shapes.holdout)"
    lines = [f"evaluation of {result['checkpoint']}: {result['prompts']} {kind} prompts, "
             f"{result['sampler']} {result['steps']} steps, guidance {result['guidance']} ({result['seconds']} s)",
             f"  {'attribute':<16}{'accuracy':>9}  target"]
    for key, acc in result["accuracy"].items():
        target = result["targets"].get(key)
        verdict = "" if target is None else f">= {target:.0%}  {'ok' if acc >= target else 'MISSED'}"
        lines.append(f"  {key:<16}{acc:>9.1%}  {verdict}")
    val = "n/a" if result["val_loss"] is None else f"{result['val_loss']:.4f}"
    lines += [f"  {'val loss':<16}{val:>9}",
              f"  {'motion energy':<16}{result['motion_energy']:>9.2f}  (mean |frame diff|, 0-255)",
              f"  {'background std':<16}{result['background_std']:>9.2f}  (border pixels over time, 0-255)"]
    return "\n".join(lines)
