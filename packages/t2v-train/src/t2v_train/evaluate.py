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

from t2v_data.prepare_config import PrepareConfig, config_hash, prepare_config
from t2v_data.shapes import all_combos, caption, heldout_prompts, is_valid_combo
from t2v_data.shards import Manifest
from t2v_model.config import ModelCard
from t2v_model.errors import ConfigError, DataError
from t2v_model.files import write_json_atomic
from t2v_model.pipeline import TextToVideo
from t2v_model.video_io import save_grid

from .adherence import attribute_space, chance_levels, sanity_stats, score
from .config import Experiment
from .distributed import pick_device
from .trainer import validation_loss


def evaluate(exp: Experiment, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    cfg = exp.evaluate
    ckpt_dir = Path(checkpoint or cfg.checkpoint or exp.out_dir / "model")
    device = pick_device(cfg.device, key="evaluate.device")
    pipe = TextToVideo.from_pretrained(ckpt_dir, device=device)
    space = attribute_space(exp.raw)
    if space is None:
        raise ConfigError(f"data.source: prompt adherence needs the synthetic shapes source, got "
                          f"{(exp.raw.get('data') or {}).get('source')!r}")
    data_cfg = prepare_config(exp.raw.get("data"))
    if pipe.card.unet != exp.model.unet:
        print(f"warning: {ckpt_dir} was trained with another model.unet than {exp.name}'s config; scoring it anyway",
              file=sys.stderr)
    prompts = heldout_prompts(data_cfg, cfg.num_prompts, cfg.seed)
    captions = [p["caption"] for p in prompts]
    seen = seen_in_training(data_cfg, captions)
    if seen:
        print(f"warning: {len(seen)} of {len(prompts)} held-out prompts have a caption that also captions training "
              f"clips (e.g. {seen[0]!r}): data.shapes.templates[0] does not name every attribute that "
              f"data.shapes.holdout holds out, so these prompts are not unseen", file=sys.stderr)
    manifest, val_problem = training_data(exp, pipe.card)
    data_matches = None if manifest is None else manifest.config_hash == config_hash(data_cfg, exp.seed)
    if data_matches is False:
        print(f"warning: the shards in {exp.data_dir} were prepared from another data config than {exp.name}'s: "
              f"the prompts{' and the held-out label' if data_cfg.shapes.holdout else ''} follow this config, not "
              f"necessarily the data the model was trained on", file=sys.stderr)
    if val_problem and cfg.val_batches:
        print(f"warning: no val loss: {val_problem}", file=sys.stderr)
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
    if cfg.val_batches and manifest is not None and not val_problem:
        try:
            val_loss = validation_loss(pipe.model, pipe.diffusion, manifest, exp.train, cfg.val_batches, device,
                                       exp.seed)
        except DataError as e:  # e.g. a damaged val shard: the sampling done is kept
            print(f"warning: no val loss: {e}", file=sys.stderr)
    out = exp.out_dir / "eval"
    save_grid(out / "samples.gif", videos[:16], fps=pipe.card.data.fps, scale=4)
    # held_out: every prompt is a combination never generated for training AND its caption is no training caption
    result = {"checkpoint": str(ckpt_dir), "prompts": len(prompts), "distinct_captions": len(set(captions)),
              "held_out": bool(data_cfg.shapes.holdout) and not seen, "holdout": data_cfg.shapes.holdout,
              "captions_seen_in_training": sum(c in set(seen) for c in captions),
              "data_config_matches_shards": data_matches,
              "sampler": cfg.sampler, "steps": cfg.steps,
              "guidance": cfg.guidance, "accuracy": accuracy, "chance": chance_levels(space), "targets": cfg.targets,
              "passed": all(accuracy.get(k, 0.0) >= v for k, v in cfg.targets.items()),
              "val_loss": val_loss if math.isfinite(val_loss) else None,
              "val_clips": min(cfg.val_batches * exp.train.batch_size, manifest.count("val")) if math.isfinite(
                  val_loss) else 0,
              **sanity_stats(videos),
              "seconds": round(seconds, 1),
              "videos": [{"caption": c, **r} for c, r in zip(captions, rows)]}
    write_json_atomic(out / "results.json", result)
    return result


def seen_in_training(data_cfg: PrepareConfig, captions: list[str]) -> list[str]:
    """The distinct `captions` that some training clip may carry too (any template, any combination that is not held
    out), when data.shapes.holdout is set: a holdout on attributes the prompt template does not name (size, speed,
    background) yields prompts whose text the model has seen. [] without a holdout (nothing is claimed unseen)."""
    sc = data_cfg.shapes
    if not sc.holdout:
        return []
    train = {caption(t, c) for c in all_combos(sc) if is_valid_combo(c, sc) for t in sc.templates}
    return sorted({c for c in captions if c in train})


def training_data(exp: Experiment, card: ModelCard) -> tuple[Manifest | None, str | None]:
    """(manifest of the experiment's pre-embedded shards or None, why their val split cannot give this checkpoint a
    val loss or None). Shards of another geometry or text encoder would give a meaningless number or a crash."""
    if not exp.data_dir.is_dir():
        return None, f"{exp.data_dir} does not exist"
    try:
        manifest = Manifest.read(exp.data_dir)
    except DataError as e:
        return None, str(e)
    problem = manifest.card_mismatch(card.data, card.text_encoder, card.unet.cross_attn)
    if problem is None and not manifest.count("val"):
        problem = f"no val split in {exp.data_dir}"
    return manifest, problem


def format_table(result: dict[str, Any]) -> str:
    n, seen = result["prompts"], result.get("captions_seen_in_training", 0)
    if result.get("held_out"):
        kind = "held-out"
        matches = result.get("data_config_matches_shards")
        if matches is False:
            kind += " (unverified: the training shards come from another data config)"
        elif matches is None:
            kind += " (unverified: no training shards to check the data config against)"
    elif seen:
        kind = f"held-out-combination ({seen} of {n} captions also caption training clips, so not unseen)"
    else:
        kind = "in-distribution (no data.shapes.holdout)"
    distinct = result.get("distinct_captions", n)
    lines = [f"evaluation of {result['checkpoint']}: {n} {kind} prompts"
             + (f" ({distinct} distinct captions)" if distinct < n else "")
             + f", {result['sampler']} {result['steps']} steps, guidance {result['guidance']} ({result['seconds']} s)",
             f"  {'attribute':<16}{'accuracy':>9}  {'chance':>6}  target"]
    for key, acc in result["accuracy"].items():
        target = result["targets"].get(key)
        chance = (result.get("chance") or {}).get(key)
        chance_text = "" if chance is None else f"{chance:.1%}"
        verdict = "" if target is None else f">= {target:.0%}  {'ok' if acc >= target else 'MISSED'}"
        lines.append(f"  {key:<16}{acc:>9.1%}  {chance_text:>6}  {verdict}".rstrip())
    val = "n/a" if result["val_loss"] is None else f"{result['val_loss']:.4f}"
    # training logs its val loss over train.val_batches, often fewer clips: say which clips this one is over
    over = f"  (first {result['val_clips']} val clips, t uniform)" if result.get("val_clips") else ""
    lines += [f"  {'val loss':<16}{val:>9}{over}",
              f"  {'motion energy':<16}{result['motion_energy']:>9.2f}  (mean |frame diff|, 0-255)",
              f"  {'background std':<16}{result['background_std']:>9.2f}  (border pixels over time, 0-255)"]
    return "\n".join(lines)
