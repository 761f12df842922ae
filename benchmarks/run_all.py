"""The whole benchmark suite in one run: one table of ours-vs-peer ratios, every ratio measured in the same process run.

    uv run benchmarks/run_all.py                                        # our numbers only
    uv run --with video-diffusion-pytorch==0.7.0 benchmarks/run_all.py  # side by side (the peer never enters uv.lock)
    uv run benchmarks/run_all.py --quick                                # smoke run (minutes), JSON to the temp dir
    uv run benchmarks/run_all.py --only seed,sampling                   # some parts; results merge into the JSON
    uv run benchmarks/run_all.py --report                               # print the table of an existing JSON

Parts:
  seed      train throughput at the seed config (dim 64, mults 1,2,4,8, 5x32x32, batch 2, 768-d text): ours fp32,
            ours under bf16 autocast, the peer fp32 (+ the guided denoise step); rounds alternate between the models.
  large     the same model at 16x64x64, batch 2 (train only).
  sampling  our 50-step guided DDIM sample, timed whole, vs the peer's 1000-step guided ancestral sample, of which a few
            steps are timed and the median is multiplied by 1000 (EXTRAPOLATED, said so in the output).
  memory    peak memory of one train step at 16x64x64 batch 8: ours, ours with gradient_checkpointing, the peer; each
            in a FRESH subprocess. CPU: peak RSS during the step (getrusage ru_maxrss) minus the resident RSS right
            before it, i.e. after the weights, the inputs and the Adam moments exist -> activations + gradients +
            temporaries. CUDA: torch.cuda.max_memory_allocated minus memory_allocated before the step, same meaning.
  scaling   our train-step time and peak memory (as above, one subprocess per cell) for frames x size, with a smaller
            model (--scale-dim/--scale-mults, batch --scale-batch); cells whose estimated cost exceeds --scale-max-s
            (extrapolated from the measured cells by voxel count) are skipped and marked.
  pipeline  prepare clips/s (benchmarks/prepare_speed.py), embed captions/s cold vs cached (benchmarks/embed_speed.py),
            the trainer's shard loader (t2v_train.data.train_loader) over pre-embedded shards made on the fly by the
            prepare + embed APIs, vs the samples/s a train step of the quickstart model consumes (target: >= 5x).

On CUDA ours runs under bf16 autocast as well (SDPA attention is what the model uses everywhere), and also with the
whole train step (forward, loss, backward, fused AdamW) captured once as a CUDA graph and replayed (eager capture, no
compiler: at small sizes a GPU step is mostly kernel launches); --compile adds a torch.compile'd variant of ours (on
CUDA also one with mode="reduce-overhead", and one compiled in the default mode whose whole step is captured). Timings on a shared machine are noisy: rounds alternate, medians are reported.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import model_speed as ms  # (sibling benchmark script: the shared model/timing helpers)

PARTS = ["seed", "large", "sampling", "memory", "scaling", "pipeline"]
PEER = "video-diffusion-pytorch"
ROOT = HERE.parent


# --------------------------------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(msg, flush=True)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        m = re.search(r"Model name:\s*(.+)", out)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def hardware(device: str) -> dict:
    info = {"host": socket.gethostname(), "device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        from importlib.metadata import version

        info["peer_version"] = version(PEER)
    except Exception:  # noqa: BLE001
        info["peer_version"] = None
    return info


def slug(hw: dict) -> str:
    name = hw.get("gpu") or f"{hw['cpu']}-{hw['cpu_count']}cpu"
    return re.sub(r"[^a-z0-9]+", "-", f"{hw['device']}-{name}".lower()).strip("-")


def margs(dim: int, mults, cond_dim: int) -> SimpleNamespace:
    return SimpleNamespace(dim=dim, mults=list(mults), cond_dim=cond_dim)


def proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (VmHWM) of this process; False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_peak(reset_ok: bool) -> int:
    if reset_ok:
        return proc_status("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux; never reset


def fmt(v, spec=".2f", none="—") -> str:
    return none if v is None else format(v, spec)


# ------------------------------------------------------------------------------------------- one train step, alone
def child_train(spec: dict) -> dict:
    """Runs in a fresh process: build one model, allocate the Adam moments, then time `steps` train steps
    (the first is a warm-up unless steps == 1) and take the peak memory over all of them minus the state before."""
    device = spec["device"]
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    a = margs(spec["dim"], spec["mults"], spec["cond_dim"])
    if spec["model"] == "peer":
        model, fwd, _ = ms.build_peer(a, device)
    else:
        model, fwd, _ = ms.build_ours(a, device, gradient_checkpointing=spec["model"] == "t2v+gc",
                                      compile=spec.get("compile", False))
    inputs = ms.make_inputs(spec["batch"], spec["frames"], spec["size"], spec["cond_dim"], device)
    opt = ms.make_optimizer(model)  # each project's trainer optimizer (ours fused AdamW, the peer's Adam)
    for p in model.parameters():  # Adam moments now, so they count as state, not as step memory (a zero-grad step
        p.grad = torch.zeros_like(p)  # leaves the weights unchanged)
    opt.step()
    opt.zero_grad(set_to_none=True)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_ok = reset_peak_rss()
        base = proc_status("VmRSS")
    times = ms.measure(model, fwd, None, inputs, spec["steps"], spec.get("bf16", False), denoise=False, opt=opt)[0]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss_peak(reset_ok)
    timed = times[1:] if len(times) > 1 else times
    return {"step_ms": round(statistics.median(timed), 1), "threads": torch.get_num_threads(),
            "peak_method": "cuda" if device == "cuda" else ("VmHWM reset" if reset_ok else "ru_maxrss"), "step_ms_all": [round(t, 1) for t in times],
            "peak_step_mib": round((peak - base) / 2**20, 1), "state_mib": round(base / 2**20, 1),
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


def in_subprocess(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy(), check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("CHILD_RESULT "):
            return json.loads(line[len("CHILD_RESULT "):])
    if proc.returncode == -9:  # the kernel's OOM killer (or a person); the children's max RSS says how far it got
        after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        reached = f" at {after / 2**20:.1f} GiB RSS" if after > before else ""
        return {"error": f"killed (SIGKILL: out of memory{reached})", "oom": True,
                "rss_at_kill_mib": round(after / 1024, 1) if after > before else None}
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}


# ------------------------------------------------------------------------------------------------------- parts
def part_speed(args, frames: int, size: int, batch: int, rounds: int, reps: int, denoise: bool) -> dict:
    a = margs(args.dim, args.mults, args.cond_dim)
    torch.manual_seed(0)
    inputs = ms.make_inputs(batch, frames, size, args.cond_dim, args.device)
    ours = ms.build_ours(a, args.device)
    runs = [("t2v fp32", ours, False), ("t2v bf16 autocast", ours, True)]
    if args.device == "cuda":  # the whole train step as one CUDA graph, eager capture (ms.cuda_graph_train_step)
        for name, bf16 in (("t2v fp32 + CUDA graph", False), ("t2v bf16 autocast + CUDA graph", True)):
            torch.manual_seed(0)
            runs.append((name, ms.build_ours(a, args.device, cuda_graph=True), bf16))
    if args.compile:
        runs.append(("t2v bf16 autocast + compile", ms.build_ours(a, args.device, compile=True), True))
        if args.device == "cuda":
            torch.manual_seed(0)
            runs.append(("t2v bf16 autocast + compile (CUDA graphs)",
                         ms.build_ours(a, args.device, compile=True, compile_mode="reduce-overhead"), True))
            torch.manual_seed(0)  # inductor's default mode, the whole step then captured as above
            runs.append(("t2v bf16 autocast + compile + CUDA graph",
                         ms.build_ours(a, args.device, compile=True, cuda_graph=True), True))
    if args.peer:
        runs.append((f"{PEER} fp32", ms.build_peer(a, args.device), False))
    log(f"[{frames}x{size}x{size}, batch {batch}] {', '.join(n for n, _, _ in runs)}; {rounds} rounds x {reps}")
    results = ms.summarize(ms.alternate(runs, inputs, rounds, reps, warmup=1, denoise=denoise, log=log), batch)
    out = {"geometry": {"frames": frames, "size": size, "batch": batch, "dim": args.dim, "mults": args.mults,
                        "cond_dim": args.cond_dim}, "rounds": rounds, "reps": reps, "models": results}
    peer = results.get(f"{PEER} fp32")
    if peer:
        timed = {n: r for n, r in results.items() if n.startswith("t2v") and "error" not in r}
        out["train_speedup_vs_peer_fp32"] = {n: round(peer["train_step_ms"] / r["train_step_ms"], 2)
                                             for n, r in timed.items()}
        if denoise:
            out["denoise_speedup_vs_peer_fp32"] = {
                n: round(peer["guided_denoise_step_ms"] / r["guided_denoise_step_ms"], 2) for n, r in timed.items()}
    return out


def part_sampling(args) -> dict:
    from t2v_model.config import DiffusionConfig
    from t2v_model.diffusion import GaussianDiffusion
    from t2v_model.samplers import ddim_sample, guided_denoiser

    a = margs(args.dim, args.mults, args.cond_dim)
    b, f, s, dev = args.sample_batch, args.frames, args.size, args.device
    variants = {"fp32": False, "bf16 autocast": True}  # ours both ways (the peer: fp32, as it ships)
    torch.manual_seed(0)
    model = ms.build_ours(a, dev)[0].eval()
    text = torch.randn(b, args.cond_dim, generator=torch.Generator().manual_seed(1)).to(dev)
    diffusion = GaussianDiffusion(DiffusionConfig())

    def ours_sample(bf16):
        with torch.inference_mode(), ms.autocast(dev, bf16):
            ddim_sample(guided_denoiser(model, text, guidance=3.0), diffusion, (b, 3, f, s, s), steps=args.ddim_steps,
                        generator=torch.Generator(dev).manual_seed(0), device=dev)

    peer_step = None
    if args.peer:
        from video_diffusion_pytorch import GaussianDiffusion as PeerDiffusion

        peer_unet = ms.build_peer(a, dev)[0].eval()
        peer = PeerDiffusion(peer_unet, image_size=s, num_frames=f, timesteps=1000).to(dev)
        img = torch.randn(b, 3, f, s, s, device=dev)
        ts = iter(range(999, -1, -1))

        def peer_step():
            with torch.inference_mode():
                peer.p_sample(img, torch.full((b,), next(ts), device=dev, dtype=torch.long), cond=text, cond_scale=3.0)

    ours_s, peer_ms = {v: [] for v in variants}, []
    for bf16 in variants.values():
        with torch.inference_mode(), ms.autocast(dev, bf16):  # warm-up: one guided step
            guided_denoiser(model, text, guidance=3.0)(torch.randn(b, 3, f, s, s, device=dev),
                                                       torch.full((b,), 999, device=dev))
    if peer_step:
        ms.timed(peer_step, 1)
    for r in range(args.sample_rounds):
        for v, bf16 in variants.items():
            ours_s[v] += [t / 1000 for t in ms.timed(lambda bf16=bf16: ours_sample(bf16), 1)]
        if peer_step:
            peer_ms += ms.timed(peer_step, args.peer_steps)
        log(f"  round {r + 1}/{args.sample_rounds}: ours {args.ddim_steps}-step sample "
            + ", ".join(f"{v} {ours_s[v][-1]:.1f} s" for v in variants)
            + (f"; peer guided steps {[round(v) for v in peer_ms[-args.peer_steps:]]} ms" if peer_step else ""))
    out = {"geometry": {"frames": f, "size": s, "batch": b, "dim": args.dim, "mults": args.mults},
           "ours": {v: {"sampler": f"DDIM {args.ddim_steps} steps, guidance 3 (cond+uncond batched)",
                        "seconds": round(statistics.median(ours_s[v]), 2),
                        "seconds_all": [round(x, 2) for x in ours_s[v]]} for v in variants}}
    if peer_ms:
        step = statistics.median(peer_ms)
        out["peer"] = {"sampler": "ancestral 1000 steps, cond_scale 3 (two forwards per step)",
                       "guided_step_ms": round(step, 1), "steps_timed": len(peer_ms), "extrapolated": True,
                       "seconds_extrapolated_x1000": round(step, 1)}  # step ms x 1000 steps / 1000 ms per s
        out["speedup"] = {v: round(step / out["ours"][v]["seconds"], 1) for v in variants}
    return out


def part_memory(args) -> dict:
    models = ["t2v", "t2v+gc"] + (["peer"] if args.peer else [])
    out = {"geometry": {"frames": args.mem_frames, "size": args.mem_size, "batch": args.mem_batch, "dim": args.dim,
                        "mults": args.mults},
           "method": ("torch.cuda.max_memory_allocated - memory_allocated before the step" if args.device == "cuda" else
                      "fresh subprocess each; the kernel's resident high-water mark (VmHWM, reset via /proc/self/clear_refs "
                      "right before the step; getrusage ru_maxrss where that is refused) after one train step minus "
                      "VmRSS right before it (weights, inputs and Adam moments already allocated)"),
           "models": {}}
    for m in models:
        spec = {"model": m, "device": args.device, "dim": args.dim, "mults": args.mults, "cond_dim": args.cond_dim,
                "frames": args.mem_frames, "size": args.mem_size, "batch": args.mem_batch, "steps": 1,
                "threads": args.threads}
        log(f"[memory] {m}: {args.mem_frames}x{args.mem_size}x{args.mem_size} batch {args.mem_batch} ...")
        r = in_subprocess(spec, args.child_timeout)
        out["models"][m] = r
        log(f"  {m}: {r}")
    ours, peer = out["models"]["t2v"], out["models"].get("peer")
    if peer and "peak_step_mib" in peer:
        out["peer_over_ours"] = {m: round(peer["peak_step_mib"] / r["peak_step_mib"], 2)
                                 for m, r in out["models"].items() if m != "peer" and "peak_step_mib" in r}
    if "peak_step_mib" in ours and "peak_step_mib" in out["models"]["t2v+gc"]:
        out["gc_saving"] = round(ours["peak_step_mib"] / out["models"]["t2v+gc"]["peak_step_mib"], 2)
    return out


def part_scaling(args) -> dict:
    cells = sorted(((f, s) for f in args.scale_frames for s in args.scale_sizes), key=lambda c: (c[0] * c[1] ** 2, c))
    steps = args.scale_steps
    out = {"model": {"dim": args.scale_dim, "mults": args.scale_mults, "cond_dim": args.cond_dim,
                     "batch": args.scale_batch, "other": "UnetConfig defaults"},
           "steps_per_cell": steps, "max_seconds_per_cell": args.scale_max_s, "cells": {}}
    rate = None  # measured seconds per voxel (of the largest cell so far)
    for f, s in cells:
        key = f"{f}x{s}x{s}"
        vox = f * s * s * args.scale_batch
        if rate is not None:
            est = rate * vox * (steps + 2)  # + construction / first-step overhead
            if est > args.scale_max_s:
                out["cells"][key] = {"skipped": f"estimated {est:.0f} s > {args.scale_max_s:.0f} s"}
                log(f"[scaling] {key}: skipped (estimated {est:.0f} s)")
                continue
        spec = {"model": "t2v", "device": args.device, "dim": args.scale_dim, "mults": args.scale_mults,
                "cond_dim": args.cond_dim, "frames": f, "size": s, "batch": args.scale_batch, "steps": steps,
                "bf16": args.device == "cuda", "threads": args.threads}
        start = time.perf_counter()
        r = in_subprocess(spec, max(args.scale_max_s * 3, 120))
        if "step_ms" in r:
            rate = r["step_ms"] / 1000 / vox
        out["cells"][key] = r
        log(f"[scaling] {key}: {r} ({time.perf_counter() - start:.0f} s)")
    return out


def quickstart_model():
    import yaml

    from t2v_model.config import DiffusionConfig, UnetConfig
    from t2v_model.schema import build

    exp = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    return (build(UnetConfig, exp["model"]["unet"], "model.unet"),
            build(DiffusionConfig, exp["model"]["diffusion"], "model.diffusion"), exp)


def part_pipeline(args) -> dict:
    import embed_speed
    import prepare_speed

    from t2v_data.prepare import run_prepare
    from t2v_data.prepare_config import prepare_config
    from t2v_data.shards import Manifest
    from t2v_model import Unet3D
    from t2v_model.diffusion import GaussianDiffusion
    from t2v_model.text_encoder import load_text_encoder
    from t2v_textenc import EmbedConfig, run_embed

    out = {}
    unet_cfg, diff_cfg, exp = quickstart_model()
    frames, size, batch = exp["data"]["frames"], exp["data"]["size"], exp["train"]["batch_size"]
    n = args.pipe_samples

    # prepare (benchmarks/prepare_speed.py)
    out["prepare"] = {"geometry": f"{frames}x{size}x{size}", "clips": n}
    for w in (1, 2):
        out["prepare"][f"clips_per_s_{w}w"] = round(prepare_speed.measure(size, frames, n, w, max(n // 8, 1)), 1)
    log(f"[pipeline] prepare: {out['prepare']}")

    # embed (benchmarks/embed_speed.py)
    encoder = load_text_encoder(args.pipe_encoder, batch_size=64)
    e = embed_speed.run(n // 2, 2, 64, False, encoder=encoder)
    out["embed"] = {"captions": e["captions"], "encoder": e["encoder"],
                    "cold_captions_per_s": e["cold"]["stage_captions_per_s"],
                    "cold_encoder_alone_captions_per_s": e["cold"].get("encode_captions_per_s"),
                    "cached_captions_per_s": e["cached"]["stage_captions_per_s"]}
    log(f"[pipeline] embed: {out['embed']}")

    # shard read: the trainer's loader over pre-embedded shards made here by the prepare + embed APIs
    from t2v_train import data as tdata

    with tempfile.TemporaryDirectory(prefix="t2v-bench-shards-") as tmp:
        tmp = Path(tmp)
        data = dict(exp["data"], out_dir=str(tmp / "raw"), num_samples=n, workers=2, shard_max_samples=max(n // 8, 1))
        run_prepare(prepare_config(data), seed=0, progress=False)
        tokens = bool(exp.get("embed", {}).get("tokens", False))
        run_embed(EmbedConfig(in_dir=str(tmp / "raw"), out_dir=str(tmp / "emb"), cache_dir=str(tmp / "cache"),
                              tokens=tokens, max_length=exp.get("embed", {}).get("max_length", 77)),
                  encoder=encoder, progress=False)
        shards = Manifest.read(tmp / "emb")
        cpu = torch.device("cpu")

        def to_inputs(batch):  # what the trainer does with a batch before the forward
            x = tdata.to_model_input(batch["video"], cpu)
            return x, tdata.text_inputs(batch, cpu)

        reads = {}
        for workers in (0, 1):
            loader = tdata.train_loader(shards, batch_size=batch, seed=0, rank=0, world_size=1, num_workers=workers,
                                  shuffle_buffer=256, hflip=False, batches_done=0, pin_memory=False)
            it = iter(loader)
            first = to_inputs(next(it))  # first batch: worker start + shuffle-buffer fill, not timed
            count = args.read_batches
            start = time.perf_counter()
            for _ in range(count):
                to_inputs(next(it))
            reads[workers] = batch * count / (time.perf_counter() - start)
            del it, loader
        out["shard_read"] = {"loader": "t2v_train.data.train_loader (decode + shuffle + collate + to_model_input)",
                             "tokens": tokens, "samples": n,
                             "batch": batch, "batches_timed": args.read_batches,
                             "samples_per_s_0_workers": round(reads[0], 1),
                             "samples_per_s_1_worker": round(reads[1], 1)}
    log(f"[pipeline] shard read: {out['shard_read']}")

    # what training consumes: quickstart model, real diffusion loss, the trainer's AdamW, batch from the config
    torch.manual_seed(0)
    model = Unet3D(unet_cfg).to(args.device).train()
    diffusion = GaussianDiffusion(diff_cfg)
    opt = ms.make_optimizer(model)
    x0 = first[0].to(args.device)  # a real loader batch (with tokens + mask when the config cross-attends)
    cond = {k: v.to(args.device) for k, v in first[1].items() if v is not None}

    def step():
        with ms.autocast(args.device, args.device == "cuda"):
            loss = diffusion.training_loss(model, x0, **cond)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    ms.timed(step, 1)
    step_ms = statistics.median(ms.timed(step, args.train_steps))
    consume = batch * 1000 / step_ms
    out["train_consumption"] = {"model": f"configs/quickstart.yaml (dim {unet_cfg.dim}, mults {list(unet_cfg.dim_mults)},"
                                         f" cross_attn {unet_cfg.cross_attn})",
                                "batch": batch, "step_ms": round(step_ms, 1), "samples_per_s": round(consume, 2)}
    out["loader_headroom"] = round(reads[0] / consume, 1)
    out["loader_headroom_1_worker"] = round(reads[1] / consume, 1)
    log(f"[pipeline] train step {step_ms:.0f} ms -> {consume:.1f} samples/s; loader headroom x{out['loader_headroom']}")
    return out


# --------------------------------------------------------------------------------------------------------- table
def table(res: dict) -> str:
    hw = res.get("hardware", {})
    lines = [(f"t2v benchmarks — {hw.get('device')} {hw.get('gpu') or hw.get('cpu')}, {hw.get('cpu_count')} CPUs, "
              f"torch {hw.get('torch')} ({hw.get('torch_threads')} threads), peer {hw.get('peer_version') or 'absent'}"),
             "", "| measurement | ours | peer | ours vs peer | target |", "|---|---|---|---|---|"]
    p = res.get("parts", {})

    def speed_rows(part, label):
        r = p.get(part)
        if not r:
            return
        g = r["geometry"]
        geo = f"{g['frames']}x{g['size']}x{g['size']}, batch {g['batch']}"
        peer = r["models"].get(f"{PEER} fp32")
        for name, m in r["models"].items():
            if not name.startswith("t2v"):
                continue
            if "error" in m:
                lines.append(f"| {label} train, {geo}, {name[4:]} | failed: {m['error'][:80]} | | | |")
                continue
            sp = r.get("train_speedup_vs_peer_fp32", {}).get(name)
            lines.append(f"| {label} train samples/s, {geo}, {name[4:]} (peer fp32) | {m['train_samples_per_s']:.3f} | "
                         f"{fmt(peer and peer['train_samples_per_s'], '.3f')} | {fmt(sp, '.2f')}x | — |")
        if "denoise_speedup_vs_peer_fp32" in r or "guided_denoise_step_ms" in r["models"].get("t2v fp32", {}):
            m = r["models"]["t2v fp32"]
            sp = r.get("denoise_speedup_vs_peer_fp32", {}).get("t2v fp32")
            lines.append(f"| {label} guided denoise step ms (fp32) | {m['guided_denoise_step_ms']:.0f} | "
                         f"{fmt(peer and peer.get('guided_denoise_step_ms'), '.0f')} | {fmt(sp, '.2f')}x | — |")

    speed_rows("seed", "seed")
    speed_rows("large", "large")
    s = p.get("sampling")
    if s:
        g = s["geometry"]
        peer = s.get("peer")
        ours = {"fp32": s["ours"]} if "seconds" in s["ours"] else s["ours"]  # older JSON: one variant
        speedup = s.get("speedup", {})
        speedup = {"fp32": speedup} if not isinstance(speedup, dict) else speedup
        for v, r in ours.items():
            lines.append(f"| sampling s/video (batch {g['batch']}, {g['frames']}x{g['size']}x{g['size']}): ours "
                         f"{r['sampler'].split(',')[0]} {v} vs peer 1000-step fp32 (EXTRAPOLATED x1000 from "
                         f"{peer['steps_timed'] if peer else 0} timed steps) | {r['seconds']:.1f} | "
                         f"{fmt(peer and peer['seconds_extrapolated_x1000'], '.0f')} | "
                         f"{fmt(speedup.get(v), '.1f')}x | >= 30x |")
    for key in sorted(k for k in p if k.startswith("memory")):
        m = p[key]
        g = m["geometry"]
        peer = m["models"].get("peer", {})
        for name in ("t2v", "t2v+gc"):
            r = m["models"].get(name, {})
            ratio = m.get("peer_over_ours", {}).get(name)
            lines.append(f"| peak train-step memory MiB, {g['frames']}x{g['size']}x{g['size']} batch {g['batch']}, "
                         f"{'ours + gradient checkpointing' if name == 't2v+gc' else 'ours'} | "
                         f"{fmt(r.get('peak_step_mib'), '.0f', r.get('error', '—'))} | "
                         f"{fmt(peer.get('peak_step_mib'), '.0f', peer.get('error', '—'))} | "
                         f"{fmt(ratio, '.2f')}{'x less' if ratio else ''} | — |")
    pl = p.get("pipeline")
    if pl:
        pr, em, rd, tc = pl["prepare"], pl["embed"], pl["shard_read"], pl["train_consumption"]
        lines += [
            (f"| prepare clips/s ({pr['geometry']}, 1 / 2 workers) | {pr['clips_per_s_1w']:.0f} / "
             f"{pr['clips_per_s_2w']:.0f} | | | |"),
            (f"| embed captions/s ({em['encoder']}), cold / cached | {em['cold_captions_per_s']:.0f} / "
             f"{em['cached_captions_per_s']:.0f} | | | |"),
            (f"| shard read samples/s (trainer loader, 0 / 1 workers) | {rd['samples_per_s_0_workers']:.0f} / "
             f"{rd['samples_per_s_1_worker']:.0f} | | | |"),
            f"| train consumption samples/s (quickstart model, batch {tc['batch']}) | {tc['samples_per_s']:.1f} | | | |",
            f"| loader headroom over training (0 workers) | {pl['loader_headroom']:.0f}x | | | >= 5x |",
        ]
    sc = p.get("scaling")
    if sc:
        mdl = sc["model"]
        lines += ["", (f"Scaling (ours, dim {mdl['dim']}, mults {mdl['mults']}, batch {mdl['batch']}): "
                       "train-step ms / peak step memory MiB"), ""]
        sizes = sorted({int(k.split("x")[1]) for k in sc["cells"]})
        frames = sorted({int(k.split("x")[0]) for k in sc["cells"]})
        lines += ["| frames \\ size | " + " | ".join(f"{s}x{s}" for s in sizes) + " |",
                  "|---" * (len(sizes) + 1) + "|"]
        for f in frames:
            row = []
            for s in sizes:
                c = sc["cells"].get(f"{f}x{s}x{s}", {})
                row.append(f"{c['step_ms']:.0f} ms / {c['peak_step_mib']:.0f} MiB" if "step_ms" in c else
                           ("skipped" if "skipped" in c else c.get("error", "—")[:40]))
            lines.append(f"| {f} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma list of parts: {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one round: a smoke run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd ours (meant for CUDA)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice). On a CPU shared with other busy processes use "
                         "1: OpenMP threads that wait for a time slice make every op pay scheduler latency")
    ap.add_argument("--no-peer", action="store_true", help="skip the peer even if installed")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/<device>-<date>.json;"
                    " --quick: the temp dir); parts already in the file are kept unless re-measured")
    ap.add_argument("--report", action="store_true", help="only print the table of --out / the default JSON")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--mults", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--cond-dim", type=int, default=768)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (seed part)")
    ap.add_argument("--reps", type=int, default=2, help="timed steps per round (seed part)")
    ap.add_argument("--sample-batch", type=int, default=1)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--sample-rounds", type=int, default=1)
    ap.add_argument("--peer-steps", type=int, default=3, help="peer guided steps timed per sampling round")
    ap.add_argument("--mem-frames", type=int, default=16)
    ap.add_argument("--mem-size", type=int, default=64)
    ap.add_argument("--mem-batch", type=int, default=8)
    ap.add_argument("--scale-dim", type=int, default=32)
    ap.add_argument("--scale-mults", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--scale-batch", type=int, default=1)
    ap.add_argument("--scale-frames", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--scale-sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--scale-steps", type=int, default=2, help="train steps per cell (first = warm-up if > 1)")
    ap.add_argument("--scale-max-s", type=float, default=60.0, help="skip cells estimated to take longer")
    ap.add_argument("--pipe-samples", type=int, default=2000)
    ap.add_argument("--pipe-encoder", default=None,
                    help="text encoder for the pipeline part (default: the packaged MiniLM; a local model directory)")
    ap.add_argument("--read-batches", type=int, default=100)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--child-timeout", type=float, default=3600)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print("CHILD_RESULT " + json.dumps(child_train(json.loads(args.child))), flush=True)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        ap.error(f"--only: unknown part(s) {sorted(unknown)}; choose from {PARTS}")
    args.frames, args.size, args.batch = 5, 32, 2  # the seed config
    if args.quick:
        args.rounds, args.reps = 1, 1
        args.dim, args.mults = 16, [1, 2]
        args.frames, args.size = 4, 16
        args.ddim_steps, args.peer_steps = 5, 2
        args.mem_frames, args.mem_size, args.mem_batch = 4, 32, 2
        args.scale_dim, args.scale_mults, args.scale_frames, args.scale_sizes = 16, [1, 2], [4, 8], [16, 32]
        args.scale_steps, args.scale_max_s = 1, 20
        args.pipe_samples, args.read_batches, args.train_steps = 64, 5, 1
    args.peer = ms.peer_available() and not args.no_peer
    hw = hardware(args.device)
    default = (Path(tempfile.gettempdir()) if args.quick else HERE / "results") / \
        f"{slug(hw)}-{datetime.date.today().isoformat()}{'-quick' if args.quick else ''}.json"
    path = args.out or default
    res = json.loads(path.read_text()) if path.exists() else {}
    if args.report:
        print(table(res))
        return
    res["hardware"] = hw
    if os.getloadavg()[0] > 0.5 and torch.get_num_threads() > 1 and args.device == "cpu":
        log(f"WARNING: load average {os.getloadavg()[0]:.1f} from other processes with {torch.get_num_threads()} "
            "torch threads: timings may be dominated by thread-wait latency; consider --threads 1")
    res.setdefault("parts", {})
    log(f"t2v benchmark suite on {args.device}: {hw.get('gpu') or hw['cpu']}, torch {hw['torch']}, "
        f"{hw['torch_threads']} threads; peer: {hw['peer_version'] if args.peer else 'not installed (ours only)'}")
    if not args.peer:
        log("(run with `uv run --with video-diffusion-pytorch==0.7.0 benchmarks/run_all.py` for the comparison)")

    for part in parts:
        start = time.perf_counter()
        log(f"\n== {part} ==")
        if part == "seed":
            r = part_speed(args, args.frames, args.size, args.batch, args.rounds, args.reps, denoise=True)
        elif part == "large":
            f, s = (8, 32) if args.quick else (16, 64)
            r = part_speed(args, f, s, 2, args.rounds if args.quick else 2, 1, denoise=False)
        elif part == "sampling":
            r = part_sampling(args)
        elif part == "memory":
            r = part_memory(args)
            if args.mem_batch != 8 and not args.quick:  # a second batch size is kept beside the default one
                part = f"memory_b{args.mem_batch}"
        elif part == "scaling":
            r = part_scaling(args)
        else:
            r = part_pipeline(args)
        r["peer_present"] = args.peer
        r["seconds"] = round(time.perf_counter() - start, 1)
        r["measured"] = datetime.datetime.now().isoformat(timespec="seconds")
        r["load_average_after"] = os.getloadavg()
        res["parts"][part] = r
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2) + "\n")
    print("\n" + table(res))
    print(f"\nraw JSON: {path}")


if __name__ == "__main__":
    main()
