"""The inference API: a checkpoint directory in, uint8 videos out. Depends on t2v_model alone.

    pipe = TextToVideo.from_pretrained("runs/quickstart/model")
    video = pipe.generate(["a red circle moving left"], steps=50, guidance=3.0, seed=0)   # (B, T, H, W, C) uint8
    save_video("out.mp4", video[0], fps=pipe.card.data.fps)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint import load_pretrained, save_pretrained
from .config import ModelCard
from .diffusion import GaussianDiffusion
from .errors import CheckpointError, ConfigError
from .hub import checkpoint_dir, push_to_hub
from .samplers import ddim_sample, ddpm_sample, dpmpp_2m_sample, guided_denoiser
from .unet import Unet3D

# sampler names: DDIM (eta 0 deterministic), DDPM ancestral, DPM-Solver++(2M) (deterministic, second order)
SAMPLERS = ("ddim", "ddpm", "dpm++")


class TextToVideo:
    def __init__(self, model: Unet3D, card: ModelCard, device: str | torch.device = "cpu", text_encoder=None):
        device = resolve_device(device)
        self.model = model.to(device).eval()
        card.unet = model.config  # the weights define the architecture
        card.validate()
        self.card = card
        self.device = device
        self.diffusion = GaussianDiffusion(card.diffusion)
        # text_encoder: None = the card's (`card.text_encoder.id`, loaded on first use); a str or Path = a local
        # directory (or hub id) to load instead, e.g. a copy of the card's encoder on this machine, its weights hash
        # checked against the card's; an encoder object (TextEncoder or alike) = used as given
        self._text_encoder_source = str(text_encoder) if isinstance(text_encoder, (str, Path)) else None
        self._text_encoder = None if self._text_encoder_source is not None else text_encoder

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "auto", text_encoder=None,
                        revision: str | None = None, cache_dir: str | Path | None = None):
        """Load a checkpoint (model.safetensors + config.json) from a directory or a Hugging Face Hub repo id (its
        snapshot in the usual cache, downloaded once). `device` "auto": CUDA, else MPS, else the CPU. The text
        encoder named in the config is loaded on first use (or pass one, e.g. to share it between pipelines)."""
        device = resolve_device(device)  # before the weights, so a bad device is not blamed on them
        model, card = load_pretrained(checkpoint_dir(directory, revision, cache_dir), device=device)
        return cls(model, card, device=device, text_encoder=text_encoder)

    def save_pretrained(self, directory: str | Path) -> Path:
        return save_pretrained(directory, self.model, self.card)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str = "Upload t2v model") -> str:
        """Upload this checkpoint (and a model card) to the Hub repo `repo_id`, created if needed; the commit URL."""
        return push_to_hub(self.save_pretrained, self.card, repo_id, private=private, token=token,
                           commit_message=commit_message)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            from .text_encoder import load_text_encoder

            info = self.card.text_encoder
            given = self._text_encoder_source
            encoder = load_text_encoder(info.id if given is None else given, device=self.device,
                                        max_length=info.max_length)
            name = repr(info.id) if given is None else f"{given} (for {info.id!r})"
            if encoder.dim != info.dim:
                raise CheckpointError(f"text encoder {name} gives {encoder.dim}-d embeddings but the checkpoint was "
                                      f"trained on {info.dim}-d ones")
            if info.weights_hash and encoder.weights_hash != info.weights_hash:
                raise CheckpointError(f"text encoder {name} has weights {encoder.weights_hash} but the checkpoint was "
                                      f"trained with weights {info.weights_hash}; give a copy of those (text_encoder="
                                      f"DIR, generate.py --text-encoder DIR)")
            self._text_encoder = encoder
        return self._text_encoder

    def check_sampling(self, *, steps: int, guidance: float, sampler: str, eta: float, seed: int | None = 0) -> None:
        """ConfigError (naming the argument) for settings `generate` cannot use; cheap, so it runs before any work."""
        check_sampling(steps=steps, guidance=guidance, sampler=sampler, eta=eta, seed=seed,
                       num_train=self.diffusion.num_timesteps)

    def embed(self, prompts: Sequence[str]):
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)  # a generator is read once, here
        if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
            raise ConfigError("prompts: need one or more non-empty strings")
        return self.text_encoder.encode(prompts, tokens=self.card.unet.cross_attn,
                                        token_layer=self.card.text_encoder.token_layer)

    @torch.inference_mode()
    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        steps: int = 50,
        guidance: float = 3.0,
        seed: int | None = 0,
        sampler: str = "ddim",
        eta: float = 0.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """Generate one video per prompt: uint8 (B, T, H, W, C). Same seed + same prompts -> the same videos.

        `sampler`: "ddim" (default; `eta` 0 deterministic, up to 1 = DDPM's noise), "ddpm" (ancestral) or "dpm++"
        (DPM-Solver++(2M): deterministic, second order, nearest the converged sample for a given step count). `eta` is
        DDIM's alone: the other samplers ignore it."""
        self.check_sampling(steps=steps, guidance=guidance, sampler=sampler, eta=eta, seed=seed)
        emb = self.embed(prompts)
        return self.generate_from_embeddings(
            emb.pooled, tokens=emb.tokens, token_mask=emb.mask, steps=steps, guidance=guidance, seed=seed,
            sampler=sampler, eta=eta, progress=progress,
        )

    @torch.inference_mode()
    def generate_from_embeddings(
        self,
        text: torch.Tensor,
        *,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        steps: int = 50,
        guidance: float = 3.0,
        seed: int | None = 0,
        sampler: str = "ddim",
        eta: float = 0.0,
        progress: bool = False,
    ) -> torch.Tensor:
        """As `generate`, from pooled caption embeddings (B, D) (and tokens/mask for cross-attention models)."""
        self._check_embeddings(text, tokens, token_mask)
        self.check_sampling(steps=steps, guidance=guidance, sampler=sampler, eta=eta, seed=seed)
        to = lambda v: None if v is None else v.to(self.device)  # noqa: E731
        text, tokens, token_mask = to(text.float()), to(tokens), to(token_mask)
        geo = self.card.data
        shape = (text.shape[0], geo.channels, geo.frames, geo.height, geo.width)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed if seed is not None else torch.Generator().seed())  # None: fresh, global RNG untouched
        denoise = guided_denoiser(self.model, text, guidance=guidance, tokens=tokens, token_mask=token_mask)
        bar = _progress(f"sampling ({sampler}, {steps} steps)") if progress else None
        if sampler == "ddim":
            x = ddim_sample(denoise, self.diffusion, shape, steps=steps, eta=eta, generator=generator,
                            device=self.device, progress=bar)
        elif sampler == "dpm++":
            x = dpmpp_2m_sample(denoise, self.diffusion, shape, steps=steps, generator=generator, device=self.device,
                                progress=bar)
        else:
            x = ddpm_sample(denoise, self.diffusion, shape, steps=steps, generator=generator, device=self.device,
                            progress=bar)
        return to_uint8(x)

    def _check_embeddings(self, text, tokens, token_mask) -> None:
        """ConfigError naming the argument for embeddings the model cannot take (not a shape error deep in it)."""
        dim = self.card.unet.cond_dim
        if not isinstance(text, torch.Tensor) or not text.is_floating_point():
            raise ConfigError(f"text: must be a floating-point torch.Tensor (B, {dim}), got "
                             f"{getattr(text, 'dtype', type(text).__name__)}")
        if text.ndim != 2 or text.shape[0] < 1 or text.shape[1] != dim:
            raise ConfigError(f"text: embeddings must be (B, {dim}) with B >= 1, got {tuple(text.shape)}")
        if not torch.isfinite(text).all():
            raise ConfigError("text: embeddings hold NaN or infinite values")
        if not self.card.unet.cross_attn:
            return  # tokens are not used by this model
        b = text.shape[0]
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[0] != b or tokens.shape[2] != dim:
            raise ConfigError(f"tokens: this model attends to caption tokens and needs a tensor ({b}, L, {dim}), got "
                             f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else tokens!r}")
        if not isinstance(token_mask, torch.Tensor) or tuple(token_mask.shape) != tuple(tokens.shape[:2]):
            raise ConfigError(f"token_mask: needs a tensor {tuple(tokens.shape[:2])}, got "
                             f"{tuple(token_mask.shape) if isinstance(token_mask, torch.Tensor) else token_mask!r}")


def check_sampling(*, steps: int, guidance: float, sampler: str, eta: float, seed: int | None = 0,
                   num_train: int | None = None) -> None:
    """ConfigError naming the argument for sampling settings no checkpoint can use (with `num_train`, the checkpoint's
    diffusion timesteps: also more steps than it has). Needs no model, so a CLI can check its flags before loading."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ConfigError(f"steps: must be an integer, got {steps!r}")
    for name, value in (("guidance", guidance), ("eta", eta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: must be a number, got {value!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise ConfigError(f"seed: must be None or an integer in [0, 2**64), got {seed!r}")
    if steps < 1 or (num_train is not None and steps > num_train):
        bound = ">= 1" if num_train is None else f"in [1, {num_train}] (the checkpoint's diffusion timesteps)"
        raise ConfigError(f"steps: must be {bound}, got {steps}")
    if not math.isfinite(guidance) or guidance < 0:
        raise ConfigError(f"guidance: must be a finite number >= 0, got {guidance}")
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampler: unknown {sampler!r} ({' | '.join(SAMPLERS)})")
    if not 0 <= eta <= 1:
        raise ConfigError(f"eta: must be in [0, 1], got {eta}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = cuda if available, else mps, else cpu. Anything else must name a device this machine has: ConfigError
    ("device <name>: ...") for a typo or a missing GPU, instead of an obscure error from the first tensor moved."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device}: unknown (auto | cpu | cuda | cuda:N | mps)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device}: CUDA is not available (no NVIDIA GPU or driver found)")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device}: MPS is not available")
    return dev


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) in [-1, 1] -> (B, T, H, W, C) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu()


def _progress(desc: str):
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, desc=desc, leave=False)
