"""Train-step and denoise-step time of our Unet3D vs. lucidrains' video-diffusion-pytorch, in the same process.

    uv run benchmarks/model_speed.py                                   # ours only
    uv run --with video-diffusion-pytorch==0.7.0 benchmarks/model_speed.py   # side by side (peer never enters uv.lock)

Default = the seed config (dim 64, mults 1,2,4,8, 5 frames of 32x32, batch 2, 768-d text). Both models get the same
input; a train step is forward + L1 loss + backward + Adam step. A guided denoise step is one forward of the
conditional and unconditional branch (batch 2 -> 4 rows): ours batched, the peer's as its `forward_with_cond_scale`
does it (two forwards). Rounds alternate between the models and the median is reported, so background load hits both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def build_ours(args, device="cpu", gradient_checkpointing: bool = False, compile: bool = False,
               compile_mode: str | None = None):
    """Our Unet3D at args.dim/mults/cond_dim; `compile` wraps it in torch.compile (`compile_mode`, e.g.
    "reduce-overhead" = CUDA graphs, which removes the kernel-launch cost that dominates small batches on a GPU)."""
    from t2v_model import Unet3D, UnetConfig

    cfg = UnetConfig(dim=args.dim, dim_mults=tuple(args.mults), cond_dim=args.cond_dim,
                     gradient_checkpointing=gradient_checkpointing)
    model = Unet3D(cfg).to(device)
    net = torch.compile(model, mode=compile_mode) if compile else model

    def forward(x, t, text):
        return net(x, t, text)

    def guided(x, t, text):
        # cond + uncond in ONE batched forward, as TextToVideo.generate does
        drop = torch.arange(2 * len(x), device=x.device) >= len(x)
        out = net(torch.cat((x, x)), torch.cat((t, t)), torch.cat((text, text)), drop_text=drop)
        cond, uncond = out.chunk(2)
        return uncond + 3.0 * (cond - uncond)

    return model, forward, guided


def build_peer(args, device="cpu"):
    from video_diffusion_pytorch import Unet3D as PeerUnet3D

    model = PeerUnet3D(dim=args.dim, dim_mults=tuple(args.mults), cond_dim=args.cond_dim).to(device)

    def forward(x, t, text):
        return model(x, t, cond=text)

    def guided(x, t, text):
        return model.forward_with_cond_scale(x, t, cond=text, cond_scale=3.0)

    return model, forward, guided


def peer_available() -> bool:
    try:
        import video_diffusion_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def make_inputs(batch: int, frames: int, size: int, cond_dim: int, device="cpu", seed: int = 0):
    """(x, t, text): the same noise-free input for every model."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, frames, size, size, generator=g).to(device),
        torch.randint(0, 1000, (batch,), generator=g).to(device),
        torch.randn(batch, cond_dim, generator=g).to(device),
    )


def autocast(device_type: str, bf16: bool):
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16)


def measure(model, forward, guided, inputs, reps: int, bf16: bool = False, denoise: bool = True, opt=None):
    """`reps` timed train steps (forward + L1 loss + backward + Adam), then `reps` guided denoise steps (ms each)."""
    x, t, text = inputs
    if opt is None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step():
        with autocast(x.device.type, bf16):
            loss = (forward(x, t, text).float() - x).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def denoise_step():
        with torch.inference_mode(), autocast(x.device.type, bf16):
            guided(x, t, text)

    model.train()
    train = timed(train_step, reps)
    model.eval()
    return train, timed(denoise_step, reps) if denoise else []


def sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn, reps):
    out = []
    for _ in range(reps):
        sync()
        s = time.perf_counter()
        fn()
        sync()
        out.append((time.perf_counter() - s) * 1000)
    return out


def alternate(runs, inputs, rounds: int, reps: int, warmup: int = 2, denoise: bool = True, log=None):
    """runs: [(name, (model, forward, guided), bf16)]. Warm up each, then `rounds` rounds that alternate between the
    runs (so background load hits all of them alike). Returns {name: {"params_M", "train_ms": [..], "denoise_ms"}}."""
    results = {name: {"train_ms": [], "denoise_ms": []} for name, _, _ in runs}
    opts = {}
    for name, (model, fwd, guided), bf16 in runs:
        results[name]["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        opts[name] = torch.optim.Adam(model.parameters(), lr=1e-4)
        if warmup:
            measure(model, fwd, guided, inputs, warmup, bf16, denoise, opts[name])
    for r in range(rounds):
        for name, (model, fwd, guided), bf16 in runs:
            train, den = measure(model, fwd, guided, inputs, reps, bf16, denoise, opts[name])
            results[name]["train_ms"] += train
            results[name]["denoise_ms"] += den
            if log:
                log(f"  round {r + 1}/{rounds} {name}: train {[round(v) for v in train]} ms"
                    + (f", guided denoise {[round(v) for v in den]} ms" if den else ""))
    return results


def summarize(results, batch: int) -> dict:
    out = {}
    for name, r in results.items():
        train = statistics.median(r["train_ms"])
        out[name] = {"params_M": r["params_M"], "train_step_ms": round(train, 1),
                     "train_samples_per_s": round(batch * 1000 / train, 3), "train_ms_all": [round(v, 1) for v in r["train_ms"]]}
        if r["denoise_ms"]:
            out[name]["guided_denoise_step_ms"] = round(statistics.median(r["denoise_ms"]), 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--mults", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--cond-dim", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds per model")
    ap.add_argument("--reps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--compile", action="store_true",
                    help="also time our Unet3D under torch.compile (inductor; on CPU it needs a C++ compiler)")
    ap.add_argument("--bf16", action="store_true",
                    help="also time every model under CPU bf16 autocast (weights and optimizer stay fp32)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    inputs = make_inputs(args.batch, args.frames, args.size, args.cond_dim)
    built = {"t2v": build_ours(args)}
    if peer_available():
        built["video-diffusion-pytorch"] = build_peer(args)
    else:
        print("(peer not installed: run with `uv run --with video-diffusion-pytorch==0.7.0 ...` to compare)")
    # (name, model parts, bf16 autocast?)
    runs = [(name, parts, False) for name, parts in built.items()]
    if args.compile:
        torch.manual_seed(0)
        runs.insert(1, ("t2v (torch.compile)", build_ours(args, compile=True), False))
    if args.bf16:
        runs += [(f"{name} (bf16 autocast)", parts, True) for name, parts in built.items()]
    results = alternate(runs, inputs, args.rounds, args.reps)

    geometry = f"{args.frames}x{args.size}x{args.size}, batch {args.batch}, dim {args.dim}, mults {args.mults}"
    print(f"\nUnet3D speed on CPU ({torch.get_num_threads()} threads), {geometry}")
    print(f"{'model':<42}{'params (M)':>11}{'train step ms':>15}{'samples/s':>11}{'guided denoise ms':>19}")
    summary = {"geometry": geometry, "threads": torch.get_num_threads(), "torch": torch.__version__, "models": {}}
    for name, r in results.items():
        train = statistics.median(r["train_ms"])
        denoise = statistics.median(r["denoise_ms"])
        summary["models"][name] = {
            "params_M": r["params_M"],
            "train_step_ms": round(train, 1),
            "train_samples_per_s": round(args.batch * 1000 / train, 2),
            "guided_denoise_step_ms": round(denoise, 1),
        }
        print(f"{name:<42}{r['params_M']:>11}{train:>15.1f}{args.batch * 1000 / train:>11.2f}{denoise:>19.1f}")
    models = summary["models"]
    peer = models.get("video-diffusion-pytorch")
    if peer:
        summary["speedups_vs_peer_fp32"] = {}
        for name in [n for n in models if n.startswith("t2v")]:
            ours = models[name]
            ratio = {"train_step": round(peer["train_step_ms"] / ours["train_step_ms"], 2),
                     "guided_denoise_step": round(peer["guided_denoise_step_ms"] / ours["guided_denoise_step_ms"], 2)}
            summary["speedups_vs_peer_fp32"][name] = ratio
            print(f"speed-up of {name} over the peer (fp32): train step x{ratio['train_step']}, "
                  f"guided denoise step x{ratio['guided_denoise_step']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
