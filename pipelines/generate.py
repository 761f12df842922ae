"""Generate videos from a trained checkpoint. Uses t2v-model alone.

    uv run pipelines/generate.py --checkpoint runs/quickstart/model --prompt "a red circle moving left" \
        --steps 50 --guidance 3 --seed 0 --out samples/red_left.mp4
    # the card names its text encoder portably (a hub id, the packaged name or a directory's name, + weights hash);
    # where this machine has it as a local directory only:
    uv run pipelines/generate.py --checkpoint ckpt --text-encoder models/my-t5 --prompt "..."

Bad flag values or an unusable --out / --device: one `config error: ...` line and exit 2, before anything loads
(unknown flags: argparse's usage message, exit 2); a missing or corrupt checkpoint or text encoder: one `error: ...`
line and exit 1, before sampling.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from t2v_model.allocator import keep_freed_memory
from t2v_model.cli import run
from t2v_model.errors import ConfigError, T2VError
from t2v_model.pipeline import SAMPLERS, TextToVideo, check_sampling, resolve_device
from t2v_model.video_io import output_extension, save_grid, save_video

MAX_SIDE = 8192  # pixels, of a written frame after --scale
OUT_HELP = (".mp4 / .gif / .png (any case), or no extension for all three. An existing directory or a path ending in / "
            "gets files named after the prompt inside it, in all three formats. Several prompts -> numbered files "
            "(NAME-0, NAME-1, ...; in a directory 0-PROMPT, 1-PROMPT, ...) and an animated grid of them in the same "
            "format (NAME-grid / grid), with a .png contact sheet of all of them beside it")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate videos from text with a t2v checkpoint.")
    ap.add_argument("--checkpoint", required=True, type=Path, help="directory with model.safetensors + config.json")
    ap.add_argument("--prompt", action="append", required=True, help="repeat for several videos")
    ap.add_argument("--steps", type=int, default=50, help="sampling steps, 1 .. the checkpoint's diffusion timesteps")
    ap.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance weight >= 0 (1 = none)")
    ap.add_argument("--seed", type=int, default=0, help="0 .. 2**64-1; the same seed and prompts give the same videos")
    ap.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                    help="ddim (default), ddpm (ancestral, needs many steps) or dpm++ (DPM-Solver++(2M), "
                         "deterministic, second order); see docs/model.md, \"Samplers\"")
    ap.add_argument("--eta", type=float, default=0.0,
                    help="DDIM only (ignored by ddpm and dpm++): eta in [0, 1], 0 = deterministic, 1 = DDPM's noise")
    ap.add_argument("--out", default="samples/video.mp4", help=OUT_HELP)
    ap.add_argument("--scale", type=int, default=4, help="pixel upscaling of the written files (>= 1)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    ap.add_argument("--text-encoder", metavar="DIR", help="a local copy of the checkpoint's text encoder (a model "
                    "directory; its weights must be the ones the card names) instead of loading the card's id")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    phase = "sampling"

    def stage() -> str:
        nonlocal phase
        problem = _flag_error(args)  # before anything loads
        if problem:
            raise ConfigError(problem)
        video_paths, grid_path = _output_paths(args.out, args.prompt)
        keep_freed_memory()  # every denoise step re-allocates the same activations (t2v_model/allocator.py)
        pipe = TextToVideo.from_pretrained(args.checkpoint, device=resolve_device(args.device),
                                           text_encoder=args.text_encoder)
        if args.steps > pipe.diffusion.num_timesteps:
            raise ConfigError(f"--steps: at most {pipe.diffusion.num_timesteps} for this checkpoint (its diffusion "
                              f"timesteps), got {args.steps}")
        side = max(pipe.card.data.height, pipe.card.data.width) * args.scale
        if side > MAX_SIDE:  # checked before sampling: the writers would fail for memory after it
            raise ConfigError(f"--scale: {args.scale} makes {side}-pixel frames of this checkpoint's "
                              f"{pipe.card.data.height}x{pipe.card.data.width} videos; at most {MAX_SIDE}")
        start = time.perf_counter()
        videos = pipe.generate(args.prompt, steps=args.steps, guidance=args.guidance, seed=args.seed,
                               sampler=args.sampler, eta=args.eta, progress=not args.quiet)
        seconds = time.perf_counter() - start
        phase = "writing"
        fps, written, problem = pipe.card.data.fps, [], None
        try:
            for path, video in zip(video_paths, videos):
                written += save_video(path, video, fps=fps, scale=args.scale)
            if grid_path is not None:
                written += save_grid(grid_path, videos, fps=fps, scale=args.scale)
        except OSError as e:  # checked up front, so rare (disk full, ...): still list what was written
            problem = f"--out: cannot write {e.filename or args.out}: {e.strerror or e}"
        summary = "\n".join([f"{len(videos)} video(s) in {seconds:.1f} s ({args.steps} {args.sampler} steps, "
                              f"guidance {args.guidance})", *(f"  {path}" for path in written)])
        if problem:
            print(summary)
            raise T2VError(problem)
        return summary

    def interrupted() -> str:
        if phase == "sampling":
            return "nothing was written"
        return "the files written so far are complete (each is written whole or not at all)"

    return run(stage, interrupted=interrupted)


def _flag_error(args) -> str | None:
    """The first unusable flag as a one-line message, or None. Cheap checks only: this runs before any loading."""
    if any(not p.strip() for p in args.prompt):
        return "--prompt: must not be empty"
    if args.scale < 1:
        return f"--scale: must be >= 1, got {args.scale}"
    if args.text_encoder is not None and not Path(args.text_encoder).expanduser().is_dir():
        return f"--text-encoder {args.text_encoder}: no such model directory"
    try:  # the library's own checks, each message naming its argument: "steps: ...", "device NAME: ..."
        check_sampling(steps=args.steps, guidance=args.guidance, sampler=args.sampler, eta=args.eta, seed=args.seed)
        resolve_device(args.device)
    except ConfigError as e:
        return f"--{e}"
    return _out_error(args.out)


def _out_error(out: str) -> str | None:
    path = directory = Path(out)
    if not _is_directory(out):
        try:
            output_extension(path)
        except ValueError as e:  # "<out>: unsupported extension ..."
            return f"--out {e}"
        directory = path.parent
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        return f"--out {out}: {existing} is not a directory"
    try:  # creating a file is the test that holds for root too (os.access says yes to /proc and /sys)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"--out {out}: {existing} is not writable ({e.strerror or e})"
    return None


def _output_paths(out: str, prompts: list[str]) -> tuple[list[Path], Path | None]:
    """Where each video goes (a path without extension = all formats), and the grid for several prompts; see --help."""
    path = Path(out)
    if _is_directory(out):
        names = [_slug(prompts[0])] if len(prompts) == 1 else [f"{i}-{_slug(p)}" for i, p in enumerate(prompts)]
        return [path / name for name in names], (path / "grid" if len(prompts) > 1 else None)
    if len(prompts) == 1:
        return [path], None
    numbered = [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(len(prompts))]
    return numbered, path.with_name(f"{path.stem}-grid{path.suffix}")


def _is_directory(out: str) -> bool:
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def _slug(prompt: str) -> str:
    """A file name from a prompt: "A red circle, moving left" -> "a-red-circle-moving-left"."""
    return re.sub(r"\W+", "-", prompt.lower())[:80].strip("-") or "video"


if __name__ == "__main__":
    sys.exit(main())
