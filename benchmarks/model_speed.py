"""Train-step and denoise-step time of our Unet3D vs. lucidrains' video-diffusion-pytorch, in the same process.

    uv run benchmarks/model_speed.py                                   # ours only
    uv run --with video-diffusion-pytorch==0.7.0 benchmarks/model_speed.py   # side by side (peer never enters uv.lock)

Default = the seed config (dim 64, mults 1,2,4,8, 5 frames of 32x32, batch 2, 768-d text). Both models get the same
input; a train step is forward + L1 loss + backward + optimizer step, each model with its own trainer's optimizer:
ours the fused AdamW of t2v_train, the peer's torch Adam (its Trainer's); `--same-optimizer` gives both plain Adam.
A guided denoise step is one forward of the conditional and unconditional branch (batch 2 -> 4 rows): ours batched,
the peer's as its `forward_with_cond_scale` does it (two forwards). Rounds alternate between the models and the
median is reported, so background load hits both; `--isolate` runs each model's round in a fresh process (models in
one process slow each other down, the peer more than ours).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from t2v_model.allocator import keep_freed_memory

MALLOC = {"glibc": "glibc defaults for every model",
          "ours": "t2v keeps freed memory (as its pipelines do), the peer glibc's defaults",
          "both": "every model keeps freed memory (t2v_model.allocator)"}


def build_ours(args, device="cpu", gradient_checkpointing: bool = False, compile: bool = False,
               compile_mode: str | None = None, cuda_graph: bool = False):
    """Our Unet3D at args.dim/mults/cond_dim; `compile` wraps it in torch.compile (`compile_mode`, e.g.
    "reduce-overhead" = CUDA graphs, which removes the kernel-launch cost that dominates small batches on a GPU).
    `cuda_graph`: `measure` times the whole train step captured once as a CUDA graph and replayed
    (`cuda_graph_train_step`; CUDA only)."""
    from t2v_model import Unet3D, UnetConfig

    cfg = UnetConfig(dim=args.dim, dim_mults=tuple(args.mults), cond_dim=args.cond_dim)
    model = Unet3D(cfg).to(device)
    model.gradient_checkpointing = gradient_checkpointing
    net = torch.compile(model, mode=compile_mode) if compile else model

    graphs = compile and compile_mode == "reduce-overhead"

    def forward(x, t, text):
        if graphs:  # a new iteration: the CUDA graphs may reuse the previous step's output memory
            torch.compiler.cudagraph_mark_step_begin()
        return net(x, t, text)

    def guided(x, t, text):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        # cond + uncond in ONE batched forward, as TextToVideo.generate does
        drop = torch.arange(2 * len(x), device=x.device) >= len(x)
        out = net(torch.cat((x, x)), torch.cat((t, t)), torch.cat((text, text)), drop_text=drop)
        cond, uncond = out.chunk(2)
        return uncond + 3.0 * (cond - uncond)

    forward.cuda_graph, forward.graph_step = cuda_graph, None  # graph_step: the captured step's replay (measure)
    return model, forward, guided


def is_graphed(forward) -> bool:
    return getattr(forward, "cuda_graph", False)


def cuda_graph_train_step(forward, inputs, opt, bf16: bool, warmup: int = 3):
    """Forward + L1 loss + backward + optimizer step captured once as one CUDA graph; returns its replay.

    At the seed size a GPU train step is a few milliseconds of math under tens of milliseconds of kernel launches
    from Python (H200: fp32 eager 56 ms, bf16 autocast *slower*, 69 ms); a replay launches the recorded step at once.
    Eager capture, no compiler (seconds, where `torch.compile(mode="reduce-overhead")` did not finish compiling in a
    15-minute lease). Needs static inputs (the benchmark's batch is fixed; a trainer would copy each batch into
    them) and a capturable optimizer (`make_optimizer(..., capturable=True)`: its step count lives on the GPU)."""
    # autocast's cache of cast weights must be off in a capture: the casts become kernels of the graph
    step = functools.partial(train_step_once, forward, inputs, opt, bf16, autocast_cache=False)
    side = torch.cuda.Stream()  # warm up on a side stream (lazy initialisations must not be captured)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            opt.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream().wait_stream(side)
    opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients in the graph's memory pool
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def build_peer(args, device="cpu"):
    from video_diffusion_pytorch import Unet3D as PeerUnet3D

    model = PeerUnet3D(dim=args.dim, dim_mults=tuple(args.mults), cond_dim=args.cond_dim).to(device)

    def forward(x, t, text):
        return model(x, t, cond=text)

    def guided(x, t, text):
        return model.forward_with_cond_scale(x, t, cond=text, cond_scale=3.0)

    return model, forward, guided


def make_optimizer(model, same: bool = False, capturable: bool = False):
    """The optimizer each project's trainer uses: ours `t2v_train.trainer.make_optimizer` (fused AdamW), the peer's
    `torch.optim.Adam` (video_diffusion_pytorch.Trainer). same=True: plain Adam for every model. capturable=True:
    the same optimizer, safe to record in a CUDA graph."""
    from t2v_model import Unet3D

    if isinstance(model, Unet3D) and not same:
        from t2v_train.trainer import make_optimizer as trainer_optimizer

        return trainer_optimizer(model.parameters(), lr=1e-4, capturable=capturable)
    return torch.optim.Adam(model.parameters(), lr=1e-4, capturable=capturable)


def optimizer_name(opt) -> str:
    return type(opt).__name__ + (" (fused)" if opt.defaults.get("fused") else "")


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


def autocast(device_type: str, bf16: bool, cache: bool = True):
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache)


def train_step_once(forward, inputs, opt, bf16: bool, autocast_cache: bool = True):
    """Forward + L1 loss + backward + optimizer step (gradients are left for the caller to clear)."""
    x, t, text = inputs
    with autocast(x.device.type, bf16, autocast_cache):
        loss = (forward(x, t, text).float() - x).abs().mean()
    loss.backward()
    opt.step()


def measure(model, forward, guided, inputs, reps: int, bf16: bool = False, denoise: bool = True, opt=None):
    """`reps` timed train steps (forward + L1 loss + backward + optimizer), then `reps` guided denoise steps (ms
    each)."""
    x, t, text = inputs
    if opt is None:
        opt = make_optimizer(model)

    def train_step():
        train_step_once(forward, inputs, opt, bf16)
        opt.zero_grad(set_to_none=True)

    def denoise_step():
        with torch.inference_mode(), autocast(x.device.type, bf16):
            guided(x, t, text)

    model.train()
    if is_graphed(forward):  # captured on first use, then every timed step is a replay
        if forward.graph_step is None:
            forward.graph_step = cuda_graph_train_step(forward, inputs, opt, bf16)
        train_step = forward.graph_step
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


def alternate(runs, inputs, rounds: int, reps: int, warmup: int = 2, denoise: bool = True, log=None,
              same_optimizer: bool = False):
    """runs: [(name, (model, forward, guided), bf16)]. Warm up each, then `rounds` rounds that alternate between the
    runs (so background load hits all of them alike). Returns {name: {"params_M", "train_ms": [..], "denoise_ms"}}."""
    results = {name: {"train_ms": [], "denoise_ms": []} for name, _, _ in runs}
    opts, failed = {}, {}
    for name, (model, fwd, guided), bf16 in runs:
        results[name]["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
        opts[name] = make_optimizer(model, same_optimizer, capturable=is_graphed(fwd))
        results[name]["optimizer"] = optimizer_name(opts[name]) + (" + CUDA graph" if is_graphed(fwd) else "")
        n_warm = max(warmup, 1) if is_graphed(fwd) else warmup  # a graph is captured (or fails) in its first step
        try:
            if n_warm:
                measure(model, fwd, guided, inputs, n_warm, bf16, denoise, opts[name])
        except Exception as e:  # a capture can fail (PyTorch/driver version, an op that syncs): report it, time the rest
            if not is_graphed(fwd):
                raise
            failed[name] = results[name]["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            if log:
                log(f"  {name}: CUDA graph capture failed ({failed[name]}); left out")
    for r in range(rounds):
        for name, (model, fwd, guided), bf16 in runs:
            if name in failed:
                continue
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
        if "error" in r:
            out[name] = {"error": r["error"]}
            continue
        train = statistics.median(r["train_ms"])
        out[name] = {"params_M": r["params_M"], "optimizer": r["optimizer"], "train_step_ms": round(train, 1),
                     "train_samples_per_s": round(batch * 1000 / train, 3), "train_ms_all": [round(v, 1) for v in r["train_ms"]]}
        if r["denoise_ms"]:
            out[name]["guided_denoise_step_ms"] = round(statistics.median(r["denoise_ms"]), 1)
    return out


def isolated(specs, args) -> dict:
    """`rounds` rounds; in each, every model runs in a fresh process of its own (same flags), in turn."""
    results = {name: {"train_ms": [], "denoise_ms": []} for name, *_ in specs}
    for r in range(args.rounds):
        for name, *_ in specs:  # same flags: a child runs its one model and returns before --isolate/--json matter
            cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--child", name]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CHILD_RESULT ")), None)
            if line is None:
                raise SystemExit(f"model_speed: the run of {name!r} failed: "
                                 f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
            res = json.loads(line[len("CHILD_RESULT "):])
            for key in ("params_M", "optimizer"):
                results[name][key] = res[key]
            results[name]["train_ms"] += res["train_ms"]
            results[name]["denoise_ms"] += res["denoise_ms"]
            print(f"  round {r + 1}/{args.rounds} {name}: train {[round(v) for v in res['train_ms']]} ms", flush=True)
    return results


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
    ap.add_argument("--same-optimizer", action="store_true",
                    help="plain torch Adam for every model (model speed alone) instead of each trainer's optimizer")
    ap.add_argument("--isolate", action="store_true",
                    help="every round of every model in a fresh process (no model shares the heap or caches with "
                         "another); default: all models in this process, rounds alternating")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--malloc", choices=["glibc", "ours", "both"], default="glibc",
                    help="glibc: malloc as it comes; ours: t2v's processes keep freed memory as its pipelines do "
                         "(t2v_model.allocator, needs --isolate); both: every model's process does")
    ap.add_argument("--bf16", action="store_true",
                    help="also time every model under CPU bf16 autocast (weights and optimizer stay fp32)")
    args = ap.parse_args()
    if args.malloc == "ours" and not args.isolate and args.child is None:
        ap.error("--malloc ours needs --isolate (the setting is per process)")
    if args.threads:
        torch.set_num_threads(args.threads)

    # (name, which model, torch.compile?, bf16 autocast?)
    specs = [("t2v", "t2v", False, False)]
    if args.compile:
        specs.append(("t2v (torch.compile)", "t2v", True, False))
    if peer_available():
        specs.append(("video-diffusion-pytorch", "peer", False, False))
    else:
        print("(peer not installed: run with `uv run --with video-diffusion-pytorch==0.7.0 ...` to compare)")
    if args.bf16:
        specs += [(f"{name} (bf16 autocast)", which, False, True) for name, which, comp, _ in specs if not comp]

    if args.child is not None:  # one model in this fresh process: warm up, time `reps` steps, report as JSON
        name, which, comp, bf16 = next(sp for sp in specs if sp[0] == args.child)
        if args.malloc == "both" or (args.malloc == "ours" and which == "t2v"):
            keep_freed_memory()
        torch.manual_seed(0)
        parts = build_ours(args, compile=comp) if which == "t2v" else build_peer(args)
        inputs = make_inputs(args.batch, args.frames, args.size, args.cond_dim)
        res = alternate([(name, parts, bf16)], inputs, 1, args.reps, same_optimizer=args.same_optimizer)[name]
        print("CHILD_RESULT " + json.dumps(res))
        return
    if args.isolate:  # each child process applies --malloc itself (above)
        results = isolated(specs, args)
    else:
        if args.malloc == "both":
            keep_freed_memory()
        torch.manual_seed(0)
        inputs = make_inputs(args.batch, args.frames, args.size, args.cond_dim)
        built = {}
        for name, which, comp, bf16 in specs:
            key = (which, comp)
            if key not in built:
                torch.manual_seed(0)
                built[key] = build_ours(args, compile=comp) if which == "t2v" else build_peer(args)
        runs = [(name, built[(which, comp)], bf16) for name, which, comp, bf16 in specs]
        results = alternate(runs, inputs, args.rounds, args.reps, same_optimizer=args.same_optimizer)

    geometry = f"{args.frames}x{args.size}x{args.size}, batch {args.batch}, dim {args.dim}, mults {args.mults}"
    print(f"\nUnet3D speed on CPU ({torch.get_num_threads()} threads), {geometry}; malloc: {MALLOC[args.malloc]}")
    print(f"{'model':<42}{'params (M)':>11}{'optimizer':>18}{'train step ms':>15}{'samples/s':>11}{'guided denoise ms':>19}")
    summary = {"geometry": geometry, "threads": torch.get_num_threads(), "torch": torch.__version__,
               "method": (f"{args.rounds} rounds, each model in a fresh process per round" if args.isolate else
                          f"{args.rounds} rounds alternating between the models in one process"),
               "malloc": MALLOC[args.malloc],
               "models": summarize(results, args.batch)}
    for name, m in summary["models"].items():
        print(f"{name:<42}{m['params_M']:>11}{m['optimizer']:>18}{m['train_step_ms']:>15.1f}"
              f"{m['train_samples_per_s']:>11.2f}{m['guided_denoise_step_ms']:>19.1f}")
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
