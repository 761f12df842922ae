"""Evaluation of a trained checkpoint, in the way its data allows.

- Synthetic shapes: prompt adherence. Videos for synthetic prompts (combinations held out of training when
  data.shapes.holdout names some), their colour, motion and shape read back by the pixel judge (t2v_data.judge).
- Real video (any other source): FVD against the held-out clips and CLIP score against their captions
  (t2v_train.video_metrics), and a captioned grid of generated next to real clips.
- Both: the val loss, overall and by quarter of the noise schedule, and sanity stats.

    result = evaluate(load_experiment("configs/quickstart.yaml"))   # also writes <out_dir>/eval/
    print(format_table(result))
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t2v_data.prepare_config import PrepareConfig, config_hash, prepare_config
from t2v_data.shapes import all_combos, caption, heldout_prompts, is_valid_combo
from t2v_data.shards import Manifest
from t2v_model.config import ModelCard
from t2v_model.errors import DataError
from t2v_model.files import write_bytes_atomic, write_json_atomic
from t2v_model.pipeline import TextToVideo
from t2v_model.video_io import contact_sheet, save_grid, save_png

from .adherence import attribute_space, chance_levels, confusion, sanity_stats, score
from .config import Experiment
from .data import val_batches
from .distributed import pick_device
from .trainer import validation_losses
from .video_metrics import MetricUnavailable, clip_score, fvd, load_i3d


def evaluate(exp: Experiment, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Score a checkpoint in the way its data allows: prompt adherence for the synthetic shapes, FVD and CLIP score
    against the held-out clips for real video; the val loss (overall and by t) for both. Writes
    <out_dir>/eval/results.json and samples."""
    cfg = exp.evaluate
    ckpt_dir = Path(checkpoint or cfg.checkpoint or exp.out_dir / "model")
    device = pick_device(cfg.device, key="evaluate.device")
    pipe = TextToVideo.from_pretrained(ckpt_dir, device=device)
    if pipe.card.unet != exp.model.unet:
        print(f"warning: {ckpt_dir} was trained with another model.unet than {exp.name}'s config; scoring it anyway",
              file=sys.stderr)
    manifest, problem = training_data(exp, pipe.card, cfg.split)
    space = attribute_space(exp.raw)
    if space is not None:
        result = adherence(exp, pipe, space, manifest, problem, progress)
    else:
        result = real_video(exp, pipe, manifest, problem, progress)
    result = {"checkpoint": str(ckpt_dir), **result, **val_loss(exp, pipe, manifest, problem)}
    write_json_atomic(exp.out_dir / "eval" / "results.json", result)
    return result


def generate(exp: Experiment, pipe: TextToVideo, text: torch.Tensor, tokens: torch.Tensor | None,
             mask: torch.Tensor | None, progress: bool) -> torch.Tensor:
    """Videos for caption embeddings, evaluate.batch_size at a time (batch i seeded evaluate.seed + i)."""
    cfg = exp.evaluate
    cut = lambda v, i: None if v is None else v[i:i + cfg.batch_size]  # noqa: E731
    batches = range(0, len(text), cfg.batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="evaluate", unit="batch")
    return torch.cat([pipe.generate_from_embeddings(text[i:i + cfg.batch_size], tokens=cut(tokens, i),
                                                    token_mask=cut(mask, i), steps=cfg.steps, guidance=cfg.guidance,
                                                    seed=cfg.seed + i, sampler=cfg.sampler) for i in batches])


def adherence(exp: Experiment, pipe: TextToVideo, space: dict[str, list[str]], manifest: Manifest | None,
              problem: str | None, progress: bool) -> dict[str, Any]:
    """Synthetic prompts (held out of training when data.shapes.holdout names combinations), their colour, motion
    and shape read back from the generated pixels by the judge (t2v_data.judge)."""
    cfg = exp.evaluate
    data_cfg = prepare_config(exp.raw.get("data"))
    prompts = heldout_prompts(data_cfg, cfg.num_prompts, cfg.seed)
    captions = [p["caption"] for p in prompts]
    seen = seen_in_training(data_cfg, captions)
    if seen:
        print(f"warning: {len(seen)} of {len(prompts)} held-out prompts have a caption that also captions training "
              f"clips (e.g. {seen[0]!r}): data.shapes.templates[0] does not name every attribute that "
              f"data.shapes.holdout holds out, so these prompts are not unseen", file=sys.stderr)
    data_matches = None if manifest is None else manifest.config_hash == config_hash(data_cfg, exp.seed)
    if data_matches is False:
        print(f"warning: the shards in {exp.data_dir} were prepared from another data config than {exp.name}'s: "
              f"the prompts{' and the held-out label' if data_cfg.shapes.holdout else ''} follow this config, not "
              f"necessarily the data the model was trained on", file=sys.stderr)
    start = time.perf_counter()
    emb = pipe.embed(captions)
    videos = generate(exp, pipe, emb.pooled, emb.tokens, emb.mask, progress)
    seconds = time.perf_counter() - start
    rows, accuracy = score(videos, [p["attributes"] for p in prompts], space)
    save_grid(exp.out_dir / "eval" / "samples.gif", videos[:16], fps=pipe.card.data.fps, scale=4)
    # held_out: every prompt is a combination never generated for training AND its caption is no training caption
    return {"kind": "adherence", "prompts": len(prompts), "distinct_captions": len(set(captions)),
            "held_out": bool(data_cfg.shapes.holdout) and not seen, "holdout": data_cfg.shapes.holdout,
            "captions_seen_in_training": sum(c in set(seen) for c in captions),
            "data_config_matches_shards": data_matches,
            "sampler": cfg.sampler, "steps": cfg.steps,
            "guidance": cfg.guidance, "accuracy": accuracy, "chance": chance_levels(space), "targets": cfg.targets,
            "shape_confusion": confusion(rows, "shape", space["shapes"]),
            "passed": all(accuracy.get(k, 0.0) >= v for k, v in cfg.targets.items()),
            **sanity_stats(videos),
            "seconds": round(seconds, 1),
            "videos": [{"caption": c, **r} for c, r in zip(captions, rows)]}


def real_video(exp: Experiment, pipe: TextToVideo, manifest: Manifest | None, problem: str | None,
               progress: bool) -> dict[str, Any]:
    """The first evaluate.num_prompts clips of evaluate.split with their first caption: videos generated from those
    captions (already embedded in the shards, so the text encoder is not loaded), scored by FVD against the real
    clips and by CLIP score against the captions. A metric whose model is missing is a warning and null."""
    cfg = exp.evaluate
    if problem is not None:
        raise DataError(f"nothing to evaluate: {problem}")
    batch = next(val_batches(manifest, cfg.num_prompts, 1, cfg.split))
    real, captions = batch["video"], batch["caption"]
    start = time.perf_counter()
    videos = generate(exp, pipe, batch["text"], batch.get("tokens"), batch.get("mask"), progress)
    seconds = time.perf_counter() - start
    out = exp.out_dir / "eval"
    save_grid(out / "samples.gif", videos[:16], fps=pipe.card.data.fps, scale=4)
    save_png(out / "samples-captioned.png", captioned_sheet(videos[:16], captions[:16], real[:16]))
    write_bytes_atomic(out / "captions.txt", "".join(f"{i}\t{c}\n" for i, c in enumerate(captions)).encode())
    metrics: dict[str, Any] = {"fvd": None, "clip_score": None, "clip_score_real": None}
    if cfg.fvd:
        try:
            i3d = load_i3d(cfg.fvd_weights, device=pipe.device)
            metrics["fvd"] = fvd(real, videos, i3d, batch_size=cfg.batch_size)
        except MetricUnavailable as e:
            print(f"warning: no FVD: {e}", file=sys.stderr)
    if cfg.clip_model:
        try:
            metrics["clip_score"] = clip_score(videos, captions, cfg.clip_model, device=pipe.device)
            metrics["clip_score_real"] = clip_score(real, captions, cfg.clip_model, device=pipe.device)
        except MetricUnavailable as e:
            print(f"warning: no CLIP score: {e}", file=sys.stderr)
    return {"kind": "real_video", "split": cfg.split, "prompts": len(captions), "sampler": cfg.sampler,
            "steps": cfg.steps, "guidance": cfg.guidance, **metrics, **sanity_stats(videos),
            "seconds": round(seconds, 1), "videos": [{"caption": c} for c in captions]}


def val_loss(exp: Experiment, pipe: TextToVideo, manifest: Manifest | None, problem: str | None) -> dict[str, Any]:
    """The val loss over the first evaluate.val_batches batches of evaluate.split, overall and by quarter of t."""
    cfg = exp.evaluate
    none = {"val_loss": None, "val_loss_by_t": None, "val_clips": 0}
    if not cfg.val_batches:
        return none
    if problem is not None:
        print(f"warning: no val loss: {problem}", file=sys.stderr)
        return none
    try:
        loss, by_t, clips = validation_losses(pipe.model, pipe.diffusion, manifest, exp.train, cfg.val_batches,
                                              pipe.device, exp.seed, cfg.split)
    except DataError as e:  # e.g. a damaged val shard: the sampling done is kept
        print(f"warning: no val loss: {e}", file=sys.stderr)
        return none
    return {"val_loss": loss, "val_loss_by_t": by_t, "val_clips": clips}


def captioned_sheet(videos: torch.Tensor, captions: list[str], real: torch.Tensor | None = None) -> np.ndarray:
    """A contact sheet per caption: the generated video's frames left to right (above the real clip's, when given),
    the caption written underneath."""
    from PIL import Image, ImageDraw, ImageFont

    font, strip = ImageFont.load_default(), 14
    sheets = []
    for i, (video, text) in enumerate(zip(videos.numpy(), captions)):
        sheet = Image.fromarray(contact_sheet([video] if real is None else [video, real[i].numpy()], scale=2))
        label = f"{i}: {text}"[:120]
        width = max(sheet.width, int(ImageDraw.Draw(sheet).textlength(label, font=font)) + 4)
        canvas = Image.new("RGB", (width, sheet.height + strip), (255, 255, 255))
        canvas.paste(sheet, (0, 0))
        ImageDraw.Draw(canvas).text((2, sheet.height), label, fill=(0, 0, 0), font=font)
        sheets.append(np.asarray(canvas))
    width = max(s.shape[1] for s in sheets)
    return np.concatenate([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in sheets])


def seen_in_training(data_cfg: PrepareConfig, captions: list[str]) -> list[str]:
    """The distinct `captions` that some training clip may carry too (any template, any combination that is not held
    out), when data.shapes.holdout is set: a holdout on attributes the prompt template does not name (size, speed,
    background) yields prompts whose text the model has seen. [] without a holdout (nothing is claimed unseen)."""
    sc = data_cfg.shapes
    if not sc.holdout:
        return []
    train = {caption(t, c) for c in all_combos(sc) if is_valid_combo(c, sc) for t in sc.templates}
    return sorted({c for c in captions if c in train})


def training_data(exp: Experiment, card: ModelCard, split: str = "val") -> tuple[Manifest | None, str | None]:
    """(manifest of the experiment's pre-embedded shards or None, why their `split` cannot be used to score this
    checkpoint or None). Shards of another geometry or text encoder would give a meaningless number or a crash."""
    if not exp.data_dir.is_dir():
        return None, f"{exp.data_dir} does not exist"
    try:
        manifest = Manifest.read(exp.data_dir)
    except DataError as e:
        return None, str(e)
    problem = manifest.card_mismatch(card.data, card.text_encoder, card.unet.cross_attn)
    if problem is None and not manifest.count(split):
        problem = f"no {split} split in {exp.data_dir}"
    return manifest, problem


def format_table(result: dict[str, Any]) -> str:
    head, rows = (_adherence_rows if result["kind"] == "adherence" else _real_video_rows)(result)
    val = "n/a" if result["val_loss"] is None else f"{result['val_loss']:.4f}"
    # training logs its val loss over train.val_batches, often fewer clips: say which clips this one is over
    clips = f"{result['val_clips']} {result.get('split', 'val')} clips"
    over = f"  (first {clips}, t uniform)" if result["val_clips"] else ""
    rows.append(f"  {'val loss':<16}{val:>9}{over}")
    by_t = result.get("val_loss_by_t") or []
    for b, loss in enumerate(by_t):
        lo, hi = b * 100 // len(by_t), (b + 1) * 100 // len(by_t)
        rows.append(f"  {f'  t {lo}-{hi}%':<16}{'n/a' if loss is None else f'{loss:.4f}':>9}")
    rows += [f"  {'motion energy':<16}{result['motion_energy']:>9.2f}  (mean |frame diff|, 0-255)",
             f"  {'background std':<16}{result['background_std']:>9.2f}  (border pixels over time, 0-255)"]
    return "\n".join([head, *rows])


def _sampling(result: dict[str, Any]) -> str:
    return f"{result['sampler']} {result['steps']} steps, guidance {result['guidance']} ({result['seconds']} s)"


def _real_video_rows(result: dict[str, Any]) -> tuple[str, list[str]]:
    n = result["prompts"]
    head = (f"evaluation of {result['checkpoint']}: the first {n} {result['split']} clips and their first captions, "
            f"{_sampling(result)}")
    fvd_value = "n/a" if result["fvd"] is None else f"{result['fvd']:.4g}"
    clip = "n/a" if result["clip_score"] is None else f"{result['clip_score']:.4f}"
    real = "" if result["clip_score_real"] is None else f"; the real clips {result['clip_score_real']:.4f}"
    return head, [f"  {'metric':<16}{'value':>9}",
                  f"  {'FVD':<16}{fvd_value:>9}  (I3D, {n} generated vs {n} real clips; lower is better)",
                  f"  {'CLIP score':<16}{clip:>9}  (mean frame-caption cosine{real})"]


def _adherence_rows(result: dict[str, Any]) -> tuple[str, list[str]]:
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
    head = (f"evaluation of {result['checkpoint']}: {n} {kind} prompts"
            + (f" ({distinct} distinct captions)" if distinct < n else "") + f", {_sampling(result)}")
    rows = [f"  {'attribute':<16}{'accuracy':>9}  {'chance':>6}  target"]
    for key, acc in result["accuracy"].items():
        target = result["targets"].get(key)
        chance = (result.get("chance") or {}).get(key)
        chance_text = "" if chance is None else f"{chance:.1%}"
        verdict = "" if target is None else f">= {target:.0%}  {'ok' if acc >= target else 'MISSED'}"
        rows.append(f"  {key:<16}{acc:>9.1%}  {chance_text:>6}  {verdict}".rstrip())
    table = result.get("shape_confusion") or {}
    asked = [s for s, reads in table.items() if sum(reads.values())]
    if asked:  # which shape was read as which: rows the prompt's shape, columns what the judge saw
        columns = list(next(iter(table.values())))
        rows.append(f"  {'shape read as':<16}" + "".join(f"{'none' if c == 'None' else c:>9}" for c in columns))
        rows += [f"  {f'  {s}':<16}" + "".join(f"{table[s][c]:>9}" for c in columns) for s in asked]
    return head, rows
