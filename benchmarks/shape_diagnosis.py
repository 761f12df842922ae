"""Why generated shapes are misread: the judge against the noise of generated videos, and where sampling loses shape.

    uv run benchmarks/shape_diagnosis.py --config configs/quickstart.yaml --checkpoint runs/quickstart/model

For the evaluation prompts of a shapes config (evaluate's prompts, `--prompts` of them) it prints one JSON object:
- generated: the model's videos (evaluate's sampler, steps and guidance) read by the judge, and their residual noise
  (RMS distance of background pixels from the background colour and of object pixels from the object's colour);
- truth: clips rendered for the same attributes, read by the judge clean, with Gaussian noise of the generated
  videos' RMS (and twice it) and blurred; if the judge reads these right, the shape misses are the model's;
- sdedit: the true clip noised to t0 and denoised by the model from there (DDIM, guidance as above), read by the
  judge, per t0: up to which noise level the model keeps a shape it is given;
- decided: during sampling from pure noise, the judge's shape of the model's x0 prediction at each step, as agreement
  with the prompt and with the final video: when the shape is decided.
About 150 model calls on a batch of `--prompts` videos: 10-20 minutes for 64 on a 2-core CPU. The quickstart model's
output is benchmarks/results/shape_diagnosis_quickstart.json; docs/model.md, "Why shapes lag", reads it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np
import torch

from t2v_data.judge import judge_video
from t2v_data.prepare_config import prepare_config
from t2v_data.shapes import heldout_prompts, render_attributes
from t2v_model.pipeline import TextToVideo, to_uint8
from t2v_model.samplers import ddim_step, guided_denoiser, step_pairs, timestep_schedule
from t2v_train.adherence import attribute_space
from t2v_train.config import load_experiment


def residual_rms(video: np.ndarray, bg: np.ndarray) -> float:
    """RMS (0-255) of pixels from the colour they should have: the background's far from the object, the object's
    median colour inside it. Edge pixels (between 25% and 75% of the peak distance) are left out."""
    x = video.astype(np.float32)
    dist = np.linalg.norm(x - bg, axis=-1)
    peak = float(np.percentile(dist, 99.5))
    if peak < 40:
        return float(np.sqrt(((x - bg) ** 2).mean()))
    low, high = dist < 0.25 * peak, dist > 0.75 * peak
    fg = np.median(x[high], axis=0)
    res = np.concatenate([(x[low] - bg).ravel(), (x[high] - fg).ravel()])
    return float(np.sqrt((res ** 2).mean()))


def blur(video: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over H and W of uint8 (T, H, W, C)."""
    r = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    x = video.astype(np.float32)
    for axis in (1, 2):
        x = np.apply_along_axis(lambda v: np.convolve(np.pad(v, r, mode="edge"), k, mode="valid"), axis, x)
    return np.clip(x.round(), 0, 255).astype(np.uint8)


def read_shapes(videos, attrs, space) -> list[str | None]:
    return [judge_video(v, a["background_rgb"], colors=space["colors"], motions=space["motions"],
                        shapes=space["shapes"]).shape for v, a in zip(videos, attrs)]


def accuracy(read, attrs) -> float:
    return round(float(np.mean([r == a["shape"] for r, a in zip(read, attrs)])), 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--t0", type=int, nargs="+", default=[100, 300, 500, 700, 850, 950, 990])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    exp = load_experiment(args.config, args.overrides)
    cfg, data = exp.evaluate, prepare_config(exp.raw["data"])
    space = attribute_space(exp.raw)
    pipe = TextToVideo.from_pretrained(args.checkpoint, device="cpu")
    prompts = heldout_prompts(data, args.prompts, cfg.seed)
    attrs = [p["attributes"] for p in prompts]
    emb = pipe.embed([p["caption"] for p in prompts])
    torch.set_grad_enabled(False)
    denoise = guided_denoiser(pipe.model, emb.pooled, guidance=cfg.guidance, tokens=emb.tokens, token_mask=emb.mask)
    diffusion = pipe.diffusion
    abar = diffusion._get("alphas_cumprod", torch.device("cpu"))
    rng = np.random.default_rng(cfg.seed)
    truth = np.stack([render_attributes(a, data, rng)[0] for a in attrs])
    x_true = torch.from_numpy(truth).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    out: dict = {"checkpoint": args.checkpoint, "prompts": len(prompts), "sampler": "ddim", "steps": cfg.steps,
                 "guidance": cfg.guidance}

    # sampling from pure noise, judging the x0 prediction at every step
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(x_true.shape, generator=g)
    ts = timestep_schedule(diffusion.num_timesteps, cfg.steps)
    x0_reads = []
    for t, t_prev in step_pairs(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        x0 = diffusion.interpret(denoise(x, tt), x, tt).x0
        x0_reads.append((t, read_shapes(to_uint8(x0).numpy(), attrs, space)))
        x = ddim_step(denoise, diffusion, x, t, t_prev, abar)
    generated = to_uint8(x).numpy()
    final = read_shapes(generated, attrs, space)
    rms = [residual_rms(v, np.asarray(a["background_rgb"], np.float32)) for v, a in zip(generated, attrs)]
    out["generated"] = {"shape": accuracy(final, attrs), "residual_rms": round(float(np.median(rms)), 2),
                        "residual_rms_p90": round(float(np.percentile(rms, 90)), 2),
                        "misses": Counter(f"{a['shape']}->{r}" for r, a in zip(final, attrs) if r != a["shape"])}
    out["decided"] = [{"t": t, "vs_prompt": accuracy(r, attrs),
                       "vs_final": round(float(np.mean([a == b for a, b in zip(r, final)])), 4)} for t, r in x0_reads]

    # the judge on true clips, clean, noisy as generated, blurred
    noise_rng = np.random.default_rng(1)
    sigma = out["generated"]["residual_rms"] / np.sqrt(3)  # RMS over a pixel's 3 channels -> per-channel std

    def noisy(scale):
        return np.clip(truth + noise_rng.normal(0, scale * sigma, truth.shape), 0, 255).round().astype(np.uint8)

    out["truth"] = {"clean": accuracy(read_shapes(truth, attrs, space), attrs),
                    "residual_rms_clean": round(float(np.median([residual_rms(v, np.asarray(a["background_rgb"],
                                                np.float32)) for v, a in zip(truth, attrs)])), 2),
                    "noise_as_generated": accuracy(read_shapes(noisy(1), attrs, space), attrs),
                    "noise_twice": accuracy(read_shapes(noisy(2), attrs, space), attrs),
                    **{f"blur_{s}px": accuracy(read_shapes(np.stack([blur(v, s) for v in truth]), attrs, space), attrs)
                       for s in (0.5, 0.75, 1.0)}}

    # SDEdit: the true clip noised to t0, denoised by the model
    out["sdedit"] = []
    for t0 in args.t0:
        g = torch.Generator().manual_seed(cfg.seed + t0)
        noise = torch.randn(x_true.shape, generator=g)
        x = diffusion.q_sample(x_true, torch.full((len(x_true),), t0, dtype=torch.long), noise)
        sub = [t for t in ts if t < t0]
        steps = [t0, *sub]
        for t, t_prev in step_pairs(steps):
            x = ddim_step(denoise, diffusion, x, t, t_prev, abar)
        read = read_shapes(to_uint8(x).numpy(), attrs, space)
        out["sdedit"].append({"t0": t0, "snr": round(float(abar[t0] / (1 - abar[t0])), 4), "steps": len(steps),
                              "shape": accuracy(read, attrs)})
    print(json.dumps(out, default=dict))


if __name__ == "__main__":
    main()
