"""The training loop: single process or torchrun DDP, resumable exactly from its checkpoints.

    exp = load_experiment("configs/quickstart.yaml")
    summary = train(exp)            # -> runs/<name>/{checkpoints/, model/, samples/, metrics.jsonl}
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from t2v_data.shards import MANIFEST, Manifest
from t2v_model.checkpoint import exported_step, save_pretrained
from t2v_model.config import ModelCard, describe_encoder
from t2v_model.diffusion import GaussianDiffusion
from t2v_model.errors import DataError, Interrupted, Stopped, TrainingError
from t2v_model.files import remove_temp
from t2v_model.pipeline import TextToVideo
from t2v_model.schema import to_dict
from t2v_model.unet import Unet3D
from t2v_model.video_io import contact_sheet, save_grid

from . import checkpoint as ckpt
from .adherence import attribute_space, score
from .config import Experiment
from .data import text_inputs, to_model_input, train_loader, val_batches
from .distributed import Dist, init_distributed, lost_peer, peer_failed, shutdown
from .ema import EMA
from .metrics import MetricsLog


def lr_at(step: int, cfg) -> float:
    """Linear warmup to `lr`, then cosine decay to `lr * min_lr_ratio` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def prior_fraction_at(step: int, start: float, end: float | None, steps: int) -> float:
    """`start` (train.prior_fraction) annealed linearly to `end` at the last step; constant if end is None."""
    if end is None:
        return start
    return start + (end - start) * min(step / max(1, steps - 1), 1.0)


def make_optimizer(params, lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0,
                   capturable: bool = False) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each parameter, no per-tensor Python loop): on CPU the default
    for-loop AdamW costs ~95 ms per step on the 42M-parameter seed model, the fused one ~17 ms. Same update rule;
    falls back to the default implementation on devices without a fused kernel. `capturable`: safe to record in a
    CUDA graph (the step count stays on the GPU)."""
    params = list(params)
    kw = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, capturable=capturable)
    try:
        return torch.optim.AdamW(params, fused=True, **kw)
    except (RuntimeError, TypeError):  # e.g. a device type the fused kernel does not support
        return torch.optim.AdamW(params, **kw)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int, rank: int, device: torch.device) -> torch.Generator:
    """Seed the global RNGs per rank and return the generator that draws t, noise and caption dropout."""
    torch.manual_seed(seed)  # same initial weights on every rank
    np.random.seed((seed * 1009 + rank) % 2**32)
    random.seed(f"{seed}-{rank}")
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + rank)


class StopRequest:
    """SIGTERM and SIGUSR1 (a scheduler's preemption notice) and a first Ctrl-C ask the trainer to stop after the
    current step, once it has saved a checkpoint there; another Ctrl-C stops at once (KeyboardInterrupt). Active
    inside `with`, in the main thread only (elsewhere signals cannot be handled)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self):
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self.previous[s] = signal.signal(s, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signum:
            raise KeyboardInterrupt
        self.signum = self.signum or signum


def train(exp: Experiment, progress: bool = True) -> dict[str, Any]:
    d, device = init_distributed(exp.train.device)
    try:
        return Trainer(exp, d, device, progress).run()
    except RuntimeError as e:
        if not lost_peer(e):
            raise
        raise peer_failed() from None
    finally:
        shutdown(d)


class Trainer:
    def __init__(self, exp: Experiment, d: Dist, device: torch.device, progress: bool):
        cfg = self.cfg = exp.train
        self.exp, self.d, self.device, self.progress = exp, d, device, progress
        if not (exp.data_dir / MANIFEST).is_file():
            raise DataError(f"train.data_dir: no pre-embedded shards in {exp.data_dir} (no {MANIFEST}); run "
                            f"pipelines/prepare.py, then pipelines/embed.py, with this config")
        self.manifest = Manifest.read(exp.data_dir)
        unet = exp.model.unet
        mismatch = self.manifest.encoder_mismatch(exp.encoder_id, unet.cond_dim, exp.encoder_max_length,
                                                  exp.encoder_token_layer if unet.cross_attn else None)
        if mismatch:
            raise DataError(mismatch)
        self.encoder = self.manifest.text_encoder
        if unet.cross_attn and not self.encoder.tokens:
            raise TrainingError(f"model.unet.cross_attn: needs per-token embeddings but {exp.data_dir} has none "
                                f"(re-run the embed stage with embed.tokens=true)")
        self.geometry = self.manifest.geometry
        if unet.channels != self.geometry.channels:
            raise TrainingError(f"model.unet.channels: {unet.channels} but the shards in {exp.data_dir} have "
                                f"{self.geometry.channels}")
        self.out = exp.out_dir
        if self.out.exists() and not self.out.is_dir():
            raise TrainingError(f"train.out_dir: {self.out} exists and is not a directory")
        self.ckpt_root = self.out / "checkpoints"
        if device.type == "cuda" and cfg.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.has_val = bool(self.manifest.count("val"))
        # fixed sample prompts: the first val clips' captions (train clips when there is no val split)
        preview_split = "val" if self.has_val else "train"
        self.preview = next(val_batches(self.manifest, cfg.sample_count, 1, preview_split), None)
        if d.is_main and cfg.val_every and not self.has_val:
            print(f"no val split in {exp.data_dir}: validation loss is skipped")

        self.generator = seed_everything(exp.seed, d.rank, device)
        self.model = Unet3D(unet).to(device)
        self.model.gradient_checkpointing = cfg.gradient_checkpointing
        self.ema = EMA(self.model, cfg.ema_decay, cfg.ema_start, cfg.ema_every)
        self.diffusion = GaussianDiffusion(exp.model.diffusion)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.lr, cfg.betas, cfg.weight_decay)
        self.amp_dtype = autocast_dtype(cfg.precision, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.step = 0
        self.last_checkpoint: Path | None = None
        if cfg.resume == "auto":
            self.resume()
        if self.step == 0:  # starting from scratch: outputs of an earlier run (even one without a checkpoint) go aside
            self.set_aside_previous_run("fresh run" if cfg.resume == "never" else "no checkpoint to resume")
        net = self.model
        if d.enabled:
            net = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
        self.net = torch.compile(net) if cfg.compile else net
        self.log = MetricsLog(self.out, enabled=d.is_main, after_step=self.step, loggers=cfg.loggers,
                              run_name=exp.name, project=cfg.wandb_project,
                              config={"model": to_dict(exp.model), "train": to_dict(cfg), "seed": exp.seed})
        self.space = attribute_space(exp.raw)
        self.card = ModelCard(unet=unet, diffusion=exp.model.diffusion, text_encoder=self.encoder, data=self.geometry)
        self.pipe = TextToVideo(self.ema.model, self.card, device=device)  # samples the previews, as generate does
        if d.is_main:
            self.tidy()
        d.barrier()

    def tidy(self) -> None:
        """Rank 0, at the start: remove what a killed run left half-written, and export the newest checkpoint when
        model/ is missing or older (a kill right after a checkpoint, before or during its export)."""
        left = [name for folder in (self.out, self.ckpt_root) if folder.is_dir() for name in remove_temp(folder)]
        if left:
            print(f"removed what an interrupted run left: {', '.join(left)}")
        if self.step and exported_step(self.out / "model") != self.step:
            self.export()
            print(f"exported {self.out / 'model'} from {self.last_checkpoint} (it was missing or older)")

    # resume -------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"micro_batches": self.step * cfg.grad_accum, "batch_size": cfg.batch_size,
                "grad_accum": cfg.grad_accum, "num_workers": cfg.num_workers, "world_size": self.d.world_size,
                "seed": self.exp.seed, "model": to_dict(self.exp.model), "train": to_dict(cfg),
                "encoder": to_dict(self.encoder), "geometry": to_dict(self.geometry)}

    def set_aside_previous_run(self, why: str) -> None:
        """Starting from step 0: rank 0 moves a previous run's outputs aside (nothing lost, nothing mixed in)."""
        if self.d.is_main:
            moved = ckpt.set_aside(self.out)
            if moved:
                print(f"{why}: moved the previous run's {', '.join(moved[1])} to {moved[0]}/")
        self.d.barrier()

    def resume(self) -> None:
        found = ckpt.latest_checkpoint(self.ckpt_root)
        if found is None:
            return
        try:
            state = self.load_checkpoint(found.path)
        except ckpt.ResumeError as e:
            raise ckpt.ResumeError(f"{e}; {ckpt.older_checkpoints_hint(self.ckpt_root, found)}") from None
        same_order = all(state.get(k) == v for k, v in (("batch_size", self.cfg.batch_size),
                         ("grad_accum", self.cfg.grad_accum), ("num_workers", self.cfg.num_workers),
                         ("world_size", self.d.world_size), ("seed", self.exp.seed)))
        if not same_order and self.d.is_main:
            print(f"warning: {found.path}: batch/worker/world settings changed; the data order will differ")
        self.step = int(state["step"])
        self.last_checkpoint = found.path
        if self.d.is_main:
            print(f"resumed from {found.path} (step {self.step})")

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        state = ckpt.load_state(path)
        if state.get("model") != to_dict(self.exp.model):
            raise TrainingError(f"{path}: was trained with a different model config; use another name / "
                                f"train.out_dir, or --fresh (train.resume=never) to move this run aside and start over")
        old, now = state.get("encoder") or {}, to_dict(self.encoder)
        keys = ("id", "weights_hash", "dim", "token_layer")
        if old and any(old.get(k) != now.get(k) for k in keys):
            raise TrainingError(f"{path}: was trained on captions embedded by {describe_encoder(old)}, but the "
                                f"shards in {self.exp.data_dir} were embedded by {describe_encoder(now)}; embed with "
                                f"the first, or --fresh (train.resume=never) to start over")
        if state.get("geometry") not in (None, to_dict(self.geometry)) and self.d.is_main:
            print(f"warning: {path}: was trained on {state['geometry']} videos, the shards hold {self.geometry}")
        ckpt.load_weights(path, "model.safetensors", self.model)
        ckpt.load_weights(path, "ema.safetensors", self.ema.model)
        ckpt.load_torch_into(path / "optimizer.pt", self.optimizer.load_state_dict)
        if self.scaler is not None:
            ckpt.load_torch_into(path / "scaler.pt", lambda s: self.scaler.load_state_dict(s) if s else None)
        rng_file = path / f"rng-rank{self.d.rank}.pt"
        if rng_file.is_file():
            ckpt.load_torch_into(rng_file, lambda s: ckpt.set_rng_state(s, self.generator))
        else:
            print(f"warning: {rng_file}: missing; resuming with fresh random state, so the run will not repeat the "
                  f"uninterrupted one exactly")
        return state

    def save(self) -> None:
        d = self.d
        tmp = ckpt.begin_save(self.ckpt_root, self.step) if d.is_main else self.ckpt_root / f".step-{self.step:06d}.tmp"
        d.barrier()
        ckpt.save_rank_state(tmp, d.rank, self.generator)
        d.barrier()
        if d.is_main:
            self.last_checkpoint = ckpt.finish_save(tmp, self.ckpt_root, self.step, model=self.model,
                                                    ema=self.ema.model, optimizer=self.optimizer, scaler=self.scaler,
                                                    state=self.state(), keep=self.cfg.keep_checkpoints)
            self.export()
        d.barrier()

    def export(self) -> Path:
        return save_pretrained(self.out / "model", self.ema.model, self.card, step=self.step)

    # loop ---------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to `train.steps`; the summary's loss is None when the checkpoint resumed from was already there.
        SIGTERM, SIGUSR1 or a first Ctrl-C stop it after the current step, with a checkpoint there (Stopped)."""
        cfg, d = self.cfg, self.d
        start = time.perf_counter()
        if self.step >= cfg.steps:
            self.log.close()
            return {"step": self.step, "loss": None, "checkpoint": str(self.last_checkpoint),
                    "model": str(self.out / "model"), "seconds": 0.0}
        loader = train_loader(self.manifest, batch_size=cfg.batch_size, seed=self.exp.seed,
                              rank=d.rank, world_size=d.world_size, num_workers=cfg.num_workers,
                              shuffle_buffer=cfg.shuffle_buffer, hflip=cfg.hflip,
                              batches_done=self.step * cfg.grad_accum, pin_memory=self.device.type == "cuda")
        bar = None
        if d.is_main and self.progress:
            from tqdm.auto import tqdm

            half = f" (half size to step {cfg.half_res_steps})" if self.step < cfg.half_res_steps else ""
            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.exp.name}{half}", unit="step")
        stop = StopRequest()
        try:  # the bar and the log are closed also on Ctrl-C or an error, before the CLI prints its line
            with stop:
                last_loss = self.loop(iter(loader), stop, bar, start)
        finally:
            if bar is not None:
                bar.close()
            self.log.close()
        if self.step < cfg.steps:  # a stop was asked for
            self.stop(self.stop_signal(stop))
        return {"step": self.step, "loss": last_loss, "checkpoint": str(self.last_checkpoint),
                "model": str(self.out / "model"), "seconds": time.perf_counter() - start}

    def loop(self, batches, stop: StopRequest, bar, start: float) -> float:
        """The steps up to train.steps, or up to the step at which a stop was asked for; returns the last loss."""
        cfg, d = self.cfg, self.d
        samples_per_step = cfg.batch_size * cfg.grad_accum * d.world_size
        start_step, loss_sum, loss_count, last_loss = self.step, 0.0, 0, float("nan")
        while self.step < cfg.steps:
            try:
                loss = self.train_step(batches)
            except Exception:
                if stop.signum:  # e.g. a DataLoader worker ended by the same SIGTERM: stop at the last full step
                    return last_loss
                raise
            self.step += 1
            if not math.isfinite(loss):
                kept = self.last_checkpoint or "none yet"
                raise TrainingError(f"step {self.step}: loss is {loss}; stopped (last good checkpoint: {kept})")
            self.ema.update(self.model, self.step)
            last_loss, loss_sum, loss_count = loss, loss_sum + loss, loss_count + 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - start
                rate = (self.step - start_step) / max(elapsed, 1e-9)
                self.log.write({"step": self.step, "loss": loss, "loss_avg": loss_sum / loss_count,
                                "lr": lr_at(self.step - 1, cfg), "steps_per_s": rate,
                                "samples_per_s": rate * samples_per_step, "time": elapsed})
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_sum / loss_count:.4f}", samples_s=f"{rate * samples_per_step:.1f}")
                loss_sum, loss_count = 0.0, 0
            if bar is not None:
                bar.update(1)
                if self.step == cfg.half_res_steps:  # full-size steps from here: the bar's rate drops ~3x
                    bar.set_description(f"train {self.exp.name}")
            final = self.step == cfg.steps
            if self.step % cfg.checkpoint_every == 0 or final:
                self.save()
            if d.is_main and self.has_val and cfg.val_every and (self.step % cfg.val_every == 0 or final):
                self.log.write({"step": self.step, "val_loss": self.validate()})
            if d.is_main and ((cfg.sample_every and self.step % cfg.sample_every == 0) or final):
                scores = self.sample()
                if scores:  # no attributes to score (e.g. MSR-VTT): the grid alone
                    self.log.write({"step": self.step, **scores})
            if not final and self.stop_signal(stop):
                break
        return last_loss

    def stop_signal(self, stop: StopRequest) -> int:
        """The signal that asked to stop (0: none), agreed by every rank, so that all stop at the same step."""
        if not self.d.enabled:
            return stop.signum
        flag = torch.tensor([stop.signum], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag.item())

    def stop(self, signum: int) -> None:
        """Checkpoint the current step (unless it just was), then end the run with one line."""
        if self.step and (self.last_checkpoint is None or self.last_checkpoint != ckpt.step_dir(self.ckpt_root,
                                                                                              self.step)):
            self.save()
        name = signal.Signals(signum).name
        saved = f"checkpoint {self.last_checkpoint} written" if self.step else "no step was done, nothing to save"
        error = Interrupted if signum == signal.SIGINT else Stopped
        raise error(f"{name} at step {self.step}: {saved}; run the same command again to resume")

    def train_step(self, batches) -> float:
        cfg, dev = self.cfg, self.device
        lr = lr_at(self.step, cfg)
        prior = prior_fraction_at(self.step, cfg.prior_fraction, cfg.prior_fraction_end, cfg.steps)
        half = self.step < cfg.half_res_steps
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        total = torch.zeros((), device=dev)
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            x0, cond = to_model_input(batch["video"], dev), text_inputs(batch, dev)
            if half:
                x0 = torch.nn.functional.avg_pool3d(x0, (1, 2, 2))
            # classifier-free guidance: these samples train the null caption (drawn here and nowhere else)
            drop = torch.rand(len(x0), device=dev, generator=self.generator) < cfg.null_cond_prob
            t, snr_scale = None, 1.0
            if half and cfg.half_res_snr_scale != 1.0:  # t drawn here, as training_loss would, to scale by it
                t = self.diffusion.sample_timesteps(len(x0), dev, self.generator, prior)
                first = 0 if cfg.half_res_snr_where == "all" else self.diffusion.prior_start
                snr_scale = torch.where(t >= first, cfg.half_res_snr_scale, 1.0)
            sync = micro == cfg.grad_accum - 1 or not self.d.enabled
            with (contextlib.nullcontext() if sync else self.net.no_sync()), self.autocast():
                loss = self.diffusion.training_loss(self.net, x0, **cond, t=t, drop_text=drop,
                                                    generator=self.generator, prior_fraction=prior, loss=cfg.loss,
                                                    min_snr_gamma=cfg.min_snr_gamma, snr_scale=snr_scale)
                loss = loss / cfg.grad_accum
            (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self.d.mean(total).item()

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # evaluation during training -------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        return validation_loss(self.ema.model, self.diffusion, self.manifest, self.cfg, self.cfg.val_batches,
                               self.device, self.exp.seed)

    def sample(self) -> dict[str, Any]:
        if self.preview is None:
            return {}
        cond = text_inputs(self.preview, self.device)
        videos = self.pipe.generate_from_embeddings(cond["text"], tokens=cond["tokens"], token_mask=cond["token_mask"],
                                                    steps=self.cfg.sample_steps, guidance=self.cfg.sample_guidance,
                                                    seed=self.exp.seed, sampler=self.cfg.sample_sampler)
        stem = self.out / "samples" / f"step-{self.step:06d}"
        save_grid(stem.with_suffix(".gif"), videos, fps=self.geometry.fps, scale=4)
        self.log.videos(self.step, contact_sheet(videos, scale=2), stem.with_suffix(".gif"), self.preview["caption"])
        stem.with_suffix(".txt").write_text("\n".join(self.preview["caption"]) + "\n")
        attrs = [m.get("attributes") or {} for m in self.preview["meta"]]
        if self.space is None or not all(attrs):
            return {}
        _, acc = score(videos, attrs, self.space)
        return {f"sample_{k}_acc": v for k, v in acc.items()}


@torch.no_grad()
def validation_loss(model, diffusion: GaussianDiffusion, manifest: Manifest, cfg, limit: int, device: torch.device,
                    seed: int, split: str = "val") -> float:
    """Mean conditional loss (train config `cfg`'s loss and weighting, batches of its batch_size) over the first
    `limit` batches of `split` with fixed t and noise, t uniform over the schedule (prior_fraction 0, whatever
    training uses), so runs with different settings compare."""
    return validation_losses(model, diffusion, manifest, cfg, limit, device, seed, split)[0]


@torch.no_grad()
def validation_losses(model, diffusion: GaussianDiffusion, manifest: Manifest, cfg, limit: int, device: torch.device,
                      seed: int, split: str = "val", buckets: int = 4) -> tuple[float, list[float | None], int]:
    """`validation_loss`, its mean in each of `buckets` equal ranges of t (low noise first; None where no sample
    drew such a t), and the number of clips it is over."""
    if not manifest.count(split) or limit == 0:
        return float("nan"), [None] * buckets, 0
    model.eval()
    generator = torch.Generator(device=device).manual_seed(seed + 7919)
    losses, per_sample, ts = [], [], []
    for batch in val_batches(manifest, cfg.batch_size, limit, split):
        x0 = to_model_input(batch["video"], device)
        keep = torch.zeros(len(x0), dtype=torch.bool, device=device)
        t = diffusion.sample_timesteps(len(x0), device, generator)  # what training_loss would draw: same numbers
        each = diffusion.training_loss(model, x0, **text_inputs(batch, device), t=t, drop_text=keep,
                                       generator=generator, loss=cfg.loss, min_snr_gamma=cfg.min_snr_gamma,
                                       reduce=False)
        losses.append(each.mean().item())
        per_sample += each.tolist()
        ts += t.tolist()
    bucket = np.minimum(np.array(ts) * buckets // diffusion.num_timesteps, buckets - 1)
    by_t = [float(np.mean(np.array(per_sample)[bucket == b])) if (bucket == b).any() else None
            for b in range(buckets)]
    return float(np.mean(losses)), by_t, len(ts)


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
