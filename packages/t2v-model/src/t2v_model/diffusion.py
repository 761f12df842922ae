"""Gaussian diffusion, all of its math in one module (Ho et al. 2020; Nichol & Dhariwal 2021; Salimans & Ho 2022).

Notation as in the papers: x_0 data in [-1, 1], x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t in {0, ..., T-1}.
The model predicts eps, x_0, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0. Schedules are computed in float64 and
stored as float32 (as improved-diffusion does). Nothing here knows about video: tensors are (B, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import DiffusionConfig


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta) for i in range(timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(timesteps: int) -> torch.Tensor:
    """Ho et al.'s linear schedule, scaled so that any T matches the 1000-step original (1e-4 .. 0.02)."""
    if timesteps <= 20:
        raise ValueError(f"linear schedule: needs more than 20 timesteps (the last beta is 20/T), got {timesteps}")
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def shifted_betas(betas: torch.Tensor, shift: float, max_beta: float = 0.999) -> torch.Tensor:
    """Move the schedule's log-SNR by -2 log(shift) at every t (Hoogeboom et al. 2023, "simple diffusion"; SD3's
    shift): shift > 1 puts more of the timesteps at high noise. A large object in a small video can be located from
    x_t until very late in the cosine schedule, so only the last few percent of t teach "where does a caption put the
    object"; shifting gives that regime more training samples and more sampler steps."""
    abar = torch.cumprod(1.0 - betas, dim=0)
    abar = torch.sigmoid(torch.logit(abar) - 2.0 * math.log(shift))
    prev = torch.cat((torch.ones(1, dtype=abar.dtype), abar[:-1]))
    return (1.0 - abar / prev).clamp(max=max_beta)


def make_betas(schedule: str, timesteps: int, shift: float = 1.0) -> torch.Tensor:
    if schedule == "cosine":
        betas = cosine_betas(timesteps)
    elif schedule == "linear":
        betas = linear_betas(timesteps)
    else:
        raise ValueError(f"schedule: unknown beta schedule {schedule!r} (cosine | linear)")
    return betas if shift == 1.0 else shifted_betas(betas, shift)


@dataclass
class ModelOutput:
    """One denoiser evaluation as the samplers use it, whatever the model predicts: eps and x_0."""

    eps: torch.Tensor
    x0: torch.Tensor


class GaussianDiffusion:
    """The forward process q, the posterior q(x_{t-1} | x_t, x_0), parameterisation conversions and the loss.

    Stateless apart from the schedule tensors (float64 in `_f64`, float32 copies made per device on first use by
    `_get`). The denoiser is passed in, never owned."""

    def __init__(self, config: DiffusionConfig | None = None, betas: torch.Tensor | None = None):
        self.config = config or DiffusionConfig()
        self.config.validate()
        betas = (make_betas(self.config.schedule, self.config.timesteps, self.config.schedule_shift) if betas is None
                 else betas.double())
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat((torch.ones(1, dtype=torch.float64), abar[:-1]))
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        tensors = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1).sqrt(),
            "posterior_variance": posterior_variance,
            # posterior variance is 0 at t=0: clip the log as improved-diffusion does
            "posterior_log_variance_clipped": torch.log(
                torch.cat((posterior_variance[1:2], posterior_variance[1:]))
            ),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "snr": abar / (1.0 - abar),
        }
        self._f64 = tensors
        self._cache: dict[torch.device, dict[str, torch.Tensor]] = {}

    def _get(self, name: str, device: torch.device) -> torch.Tensor:
        if device not in self._cache:
            self._cache[device] = {k: v.to(device=device, dtype=torch.float32) for k, v in self._f64.items()}
        return self._cache[device][name]

    def extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """Schedule value `name` at timesteps t (B,), shaped (B, 1, ..., 1) to broadcast against an ndim tensor."""
        values = self._get(name, t.device)[t.long()]
        return values.reshape(-1, *([1] * (ndim - 1)))

    # forward process
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (DDPM eq. 4)."""
        return self.extract("sqrt_alphas_cumprod", t, x0.ndim) * x0 + self.extract(
            "sqrt_one_minus_alphas_cumprod", t, x0.ndim
        ) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)  (DDPM eqs. 6-7)."""
        mean = self.extract("posterior_mean_coef1", t, xt.ndim) * x0 + self.extract("posterior_mean_coef2", t, xt.ndim) * xt
        return (
            mean,
            self.extract("posterior_variance", t, xt.ndim),
            self.extract("posterior_log_variance_clipped", t, xt.ndim),
        )

    # parameterisations
    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.extract("sqrt_recip_alphas_cumprod", t, xt.ndim) * xt - self.extract(
            "sqrt_recipm1_alphas_cumprod", t, xt.ndim
        ) * eps

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self.extract("sqrt_recip_alphas_cumprod", t, xt.ndim) * xt - x0) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, xt.ndim
        )

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0  (Salimans & Ho 2022)."""
        return self.extract("sqrt_alphas_cumprod", t, x0.ndim) * noise - self.extract(
            "sqrt_one_minus_alphas_cumprod", t, x0.ndim
        ) * x0

    def x0_from_v(self, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.extract("sqrt_alphas_cumprod", t, xt.ndim) * xt - self.extract(
            "sqrt_one_minus_alphas_cumprod", t, xt.ndim
        ) * v

    def interpret(self, model_out: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, clip: bool = True) -> ModelOutput:
        """Turn the raw network output into (eps, x0); x0 is clipped (or dynamically thresholded) when `clip`,
        and eps is then recomputed from the clipped x0 so both stay consistent."""
        pred = self.config.prediction
        if pred == "eps":
            x0 = self.x0_from_eps(xt, t, model_out)
        elif pred == "x0":
            x0 = model_out
        else:
            x0 = self.x0_from_v(xt, t, model_out)
        if clip:
            x0 = self.threshold(x0)
            return ModelOutput(eps=self.eps_from_x0(xt, t, x0), x0=x0)
        eps = model_out if pred == "eps" else self.eps_from_x0(xt, t, x0)
        return ModelOutput(eps=eps, x0=x0)

    def threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Clip to [-1, 1], or Imagen's dynamic thresholding when `dynamic_threshold` (a percentile) is set:
        s = max(1, quantile(|x0|, p)) per sample, x0 = clip(x0, -s, s) / s."""
        p = self.config.dynamic_threshold
        if p is None:
            return x0.clamp(-1.0, 1.0)
        s = torch.quantile(x0.flatten(1).abs().float(), p, dim=1).clamp(min=1.0).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        return x0.clamp(-s, s) / s

    # training
    @property
    def prior_start(self) -> int:
        """The first of the last 1% of the timesteps, where `sample_timesteps` draws its prior samples."""
        return self.num_timesteps - max(1, self.num_timesteps // 100)

    def sample_timesteps(self, batch: int, device: torch.device, generator: torch.Generator | None = None,
                         prior_fraction: float = 0.0):
        """t ~ U{0..T-1}; with `prior_fraction` p, a fraction p of them instead ~ U over the last 1% of the timesteps.
        There x_t is all but pure noise, so the model has to predict E[x_0 | caption]: where the caption puts things.
        In a small video a large object can be located from x_t almost to the end of the schedule, so uniform t
        hardly trains this."""
        t = torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)
        if prior_fraction > 0:
            late = torch.randint(self.prior_start, self.num_timesteps, (batch,), device=device, generator=generator)
            pick = torch.rand(batch, device=device, generator=generator) < prior_fraction
            t = torch.where(pick, late, t)
        return t

    def training_loss(
        self,
        model,
        x0: torch.Tensor,
        text: torch.Tensor,
        *,
        tokens: torch.Tensor | None = None,
        token_mask: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        prior_fraction: float = 0.0,
        loss: str = "l2",
        min_snr_gamma: float | None = None,
        snr_scale: float | torch.Tensor = 1.0,
        reduce: bool = True,
    ) -> torch.Tensor:
        """Mean loss over the batch for denoiser `model(x_t, t, text, tokens, token_mask, drop_text)` (with
        `reduce=False`: the (B,) loss of each sample).

        Unless given, t comes from `sample_timesteps(prior_fraction=...)` and eps ~ N(0, I). `drop_text` (B,) bool
        marks the samples trained with the null caption (classifier-free guidance); the caller draws it. `loss` is
        "l1" or "l2" on the prediction target; `min_snr_gamma` weights each sample by `min_snr_weight`.

        `snr_scale` noises x_0 at `snr_scale` times the schedule's SNR at t while the model is still told t. Averaging
        k x k pixels divides the noise variance by k^2: a clip trained at 1/k of its size with snr_scale k^2 sees at
        each t what the full-size clip shows at that scale (Hoogeboom et al. 2023, "simple diffusion"): what it learns
        there of layout and direction is what the same weights need at full size. A (B,) tensor scales each sample."""
        if loss not in ("l1", "l2"):
            raise ValueError(f"loss: unknown {loss!r} (l1 | l2)")
        b, device = x0.shape[0], x0.device
        if t is None:
            t = self.sample_timesteps(b, device, generator, prior_fraction)
        if noise is None:
            noise = torch.randn(x0.shape, device=device, dtype=x0.dtype, generator=generator)
        if not torch.is_tensor(snr_scale) and snr_scale == 1.0:
            xt, v = self.q_sample(x0, t, noise), None
        else:  # abar' / (1 - abar') = snr_scale * abar / (1 - abar)
            abar = self.extract("alphas_cumprod", t, x0.ndim)
            s = snr_scale.reshape(-1, *[1] * (x0.ndim - 1)) if torch.is_tensor(snr_scale) else snr_scale
            abar = s * abar / (1.0 + (s - 1.0) * abar)
            a, sigma = abar.sqrt(), (1.0 - abar).sqrt()
            xt, v = a * x0 + sigma * noise, a * noise - sigma * x0
        out = model(xt, t, text, tokens=tokens, token_mask=token_mask, drop_text=drop_text)
        if self.config.prediction == "eps":
            target = noise
        elif self.config.prediction == "x0":
            target = x0
        else:
            target = self.v_target(x0, t, noise) if v is None else v
        err = out.float() - target.float()
        per_sample = (err.abs() if loss == "l1" else err.square()).flatten(1).mean(1)
        if min_snr_gamma is not None:
            per_sample = per_sample * self.min_snr_weight(t, min_snr_gamma, snr_scale)
        return per_sample.mean() if reduce else per_sample

    def min_snr_weight(self, t: torch.Tensor, gamma: float, snr_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """The weight min(SNR, gamma) of the x_0 loss (Hang et al. 2023), carried over to the chosen target: the eps
        loss is SNR times the x_0 loss and the v loss (SNR + 1) times it, so their weights divide by that factor."""
        snr = self._get("snr", t.device)[t.long()] * snr_scale
        clipped = snr.clamp(max=gamma)
        pred = self.config.prediction
        if pred == "eps":
            return clipped / snr
        if pred == "v":
            return clipped / (snr + 1)
        return clipped
