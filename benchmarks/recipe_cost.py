"""What one training step of a config's model costs: FLOPs, time and peak memory, at the config's geometry.

    uv run benchmarks/recipe_cost.py --config configs/msrvtt.yaml --batch 1 2 [--device cuda] [--bf16]

Each batch size runs in a fresh process (peak memory is the process's high-water mark: CUDA's max allocated on a
GPU, the resident set on a CPU). The step is the trainer's: forward, the diffusion loss, backward and the fused AdamW,
with the config's gradient checkpointing and caption tokens of a typical MSR-VTT length. Prints one JSON line per
batch size; on a CPU the numbers scale to a GPU only through the FLOP count (an estimate, say so when quoting it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(config: str, batch: int, device: str, bf16: bool, steps: int, tokens: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from t2v_data.experiment import load_yaml
    from t2v_data.prepare_config import prepare_config_from_experiment
    from t2v_model.diffusion import GaussianDiffusion
    from t2v_model.unet import Unet3D
    from t2v_train.config import load_experiment
    from t2v_train.trainer import make_optimizer

    raw = load_yaml(config)
    exp, data = load_experiment(None, raw=raw), prepare_config_from_experiment(raw)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = Unet3D(exp.model.unet).to(dev).train()
    model.gradient_checkpointing = exp.train.gradient_checkpointing
    diffusion = GaussianDiffusion(exp.model.diffusion)
    opt = make_optimizer(model.parameters(), exp.train.lr)
    d = exp.model.unet.cond_dim
    x0 = torch.randn(batch, 3, data.frames, data.h, data.w, device=dev)
    cond = {"text": torch.randn(batch, d, device=dev)}
    if exp.model.unet.cross_attn:
        cond["tokens"] = torch.randn(batch, tokens, d, device=dev)
        cond["token_mask"] = torch.ones(batch, tokens, dtype=torch.bool, device=dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_loss(model, x0, **cond, loss=exp.train.loss,
                                           min_snr_gamma=exp.train.min_snr_gamma)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as flops:
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    params = sum(p.numel() for p in model.parameters())
    return {"config": config, "device": device, "bf16": bf16, "batch": batch,
            "geometry": f"{data.frames}x{data.h}x{data.w}", "params_m": round(params / 1e6, 1),
            "gradient_checkpointing": exp.train.gradient_checkpointing,
            "gflop_per_step": round(flops.get_total_flops() / 1e9, 1),
            "step_s": round(sorted(times)[len(times) // 2], 3), "peak_gib": round(peak / 2**30, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "msrvtt.yaml"))
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (the trainer's default on a GPU)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one untimed (FLOP-counting) step")
    ap.add_argument("--tokens", type=int, default=20, help="caption length in tokens (MSR-VTT: ~10-25)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process: one batch size
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.config, args.batch[0], args.device, args.bf16, args.steps, args.tokens)))
        return
    for batch in args.batch:
        cmd = [sys.executable, __file__, "--one", "--config", args.config, "--batch", str(batch), "--device",
               args.device, "--steps", str(args.steps), "--tokens", str(args.tokens), *(["--bf16"] if args.bf16 else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "T2V_KEEP_FREED_MEMORY": "0"})
        print(out.stdout.strip() or f'{{"batch": {batch}, "error": {json.dumps(out.stderr.strip()[-500:])}}}',
              flush=True)


if __name__ == "__main__":
    main()
