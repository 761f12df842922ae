"""Samplers: DDPM ancestral (Ho et al. 2020), DDIM (Song et al. 2021) and DPM-Solver++(2M) (Lu et al. 2022), on any
subset of the training timesteps.

A sampler gets `denoise(x_t, t) -> raw model output` (classifier-free guidance already applied, see
`guided_denoiser`) and a `GaussianDiffusion`; randomness comes only from the `torch.Generator` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Literal

import torch

from .diffusion import GaussianDiffusion

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Spacing = Literal["trailing", "leading", "linspace"]


def timestep_schedule(num_train: int, steps: int, spacing: Spacing = "trailing") -> list[int]:
    """Descending timesteps to visit. "trailing" starts at T-1 (pure noise; Lin et al. 2024), "leading" is diffusers'
    default (0, k, 2k, ...), "linspace" rounds an even grid over [0, T-1]."""
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps: must be in [1, {num_train}], got {steps}")
    if spacing == "trailing":
        ts = [round(num_train - i * num_train / steps) - 1 for i in range(steps)]
    elif spacing == "leading":
        ratio = num_train // steps
        ts = [i * ratio for i in range(steps)][::-1]
    elif spacing == "linspace":
        # exact rational grid, halves to even (float linspace misrounds the .5 ties for some step counts)
        ts = [round(Fraction((num_train - 1) * i, max(steps - 1, 1))) for i in range(steps)][::-1]
    else:
        raise ValueError(f"spacing: unknown {spacing!r} (trailing | leading | linspace)")
    return [int(t) for t in ts]


def step_pairs(ts: list[int]) -> list[tuple[int, int]]:
    """(t, t_prev) for each step of a descending schedule; the last step's t_prev is -1, i.e. x_0 itself."""
    return list(zip(ts, [*ts[1:], -1]))


def guided_denoiser(model, text, *, guidance: float, tokens=None, token_mask=None) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022): out = uncond + w * (cond - uncond).

    The conditional and unconditional branches run as ONE batched forward (the batch is doubled, the second half
    with the learned null caption). guidance == 1 needs only the conditional branch, so it runs alone."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return model(x, t, text, tokens=tokens, token_mask=token_mask)
        b = x.shape[0]
        drop = torch.arange(2 * b, device=x.device) >= b
        two = lambda v: None if v is None else torch.cat((v, v))  # noqa: E731
        out = model(two(x), two(t), two(text), tokens=two(tokens), token_mask=two(token_mask), drop_text=drop)
        cond, uncond = out.chunk(2)
        return uncond + guidance * (cond - uncond)

    return denoise


@torch.no_grad()
def ddim_sample(
    denoise: Denoiser,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    eta: float = 0.0,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip: bool = True,
    progress: Callable | None = None,
) -> torch.Tensor:
    """DDIM (eq. 12 of Song et al.): x_{t'} = sqrt(abar_t') x0 + sqrt(1 - abar_t' - sigma^2) eps + sigma z,
    sigma = eta * sqrt((1 - abar_t') / (1 - abar_t)) * sqrt(1 - abar_t / abar_t'). eta=0 is deterministic, eta=1
    matches DDPM's variance. The last step goes to abar = 1 (x_0 itself)."""
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    abar = diffusion._get("alphas_cumprod", torch.device(device))
    ts = timestep_schedule(diffusion.num_timesteps, steps, spacing)
    pairs = step_pairs(ts)
    for t, t_prev in progress(pairs) if progress else pairs:
        x = ddim_step(denoise, diffusion, x, t, t_prev, abar, eta=eta, generator=generator, clip=clip)
    return x


def ddim_step(denoise, diffusion, x, t: int, t_prev: int, abar, *, eta=0.0, generator=None, clip=True):
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    out = diffusion.interpret(denoise(x, tt), x, tt, clip=clip)
    a_t = abar[t]
    a_prev = abar[t_prev] if t_prev >= 0 else torch.ones((), device=x.device)
    sigma = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).sqrt()
    x_prev = a_prev.sqrt() * out.x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * out.eps
    if eta > 0:
        x_prev = x_prev + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_prev.to(x.dtype)


@torch.no_grad()
def ddpm_sample(
    denoise: Denoiser,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip: bool = True,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Ancestral sampling from p(x_{t-1} | x_t) = N(posterior mean(x0_hat, x_t), posterior variance).

    `steps` < T respaces the chain (Nichol & Dhariwal sec. 4): the visited timesteps define their own betas,
    1 - abar_t / abar_t_prev, and the posterior is computed with those."""
    steps = steps or diffusion.num_timesteps
    ts = timestep_schedule(diffusion.num_timesteps, steps, spacing)
    sub = diffusion if steps == diffusion.num_timesteps else respaced(diffusion, ts)
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    iterator = progress(list(range(len(ts)))) if progress else range(len(ts))
    for i in iterator:
        # index into the (possibly respaced) chain, counting down (ts[i] itself when not respaced); the model sees
        # the original timestep
        j = len(ts) - 1 - i
        x = ddpm_step(denoise, sub, x, j, ts[i], generator=generator, clip=clip)
    return x


def ddpm_step(denoise, diffusion, x, j: int, t_model: int, *, generator=None, clip=True):
    jj = torch.full((x.shape[0],), j, device=x.device, dtype=torch.long)
    tt = torch.full((x.shape[0],), t_model, device=x.device, dtype=torch.long)
    out = diffusion.interpret(denoise(x, tt), x, jj, clip=clip)
    mean, _, log_var = diffusion.q_posterior(out.x0, x, jj)
    if j == 0:
        return mean.to(x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (mean + (0.5 * log_var).exp() * noise).to(x.dtype)


@torch.no_grad()
def dpmpp_2m_sample(
    denoise: Denoiser,
    diffusion: GaussianDiffusion,
    shape: tuple[int, ...],
    *,
    steps: int = 20,
    spacing: Spacing = "trailing",
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clip: bool = True,
    progress: Callable | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a deterministic multistep solver of the
    probability-flow ODE in data prediction, second order from the second step on, one model evaluation per step.
    The first step is first order (there is no earlier x0 yet) and the last goes to x_0 itself (sigma = 0, diffusers'
    `final_sigmas_type="zero"`), which is first order too. With clipping or dynamic thresholding of x0 (`clip`) it is
    the solver the paper designs for guided sampling."""
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    ts = timestep_schedule(diffusion.num_timesteps, steps, spacing)
    pairs, last = step_pairs(ts), None
    for t, t_prev in progress(pairs) if progress else pairs:
        x, last = dpmpp_2m_step(denoise, diffusion, x, t, t_prev, last, clip=clip)
    return x


def _alpha_sigma_lambda(diffusion: GaussianDiffusion, t: int) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t) in float64: alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha/sigma).
    t = -1 is x_0 itself: alpha 1, sigma 0, lambda +inf."""
    if t < 0:
        return 1.0, 0.0, math.inf
    abar = diffusion._f64["alphas_cumprod"][t].item()
    alpha, sigma = math.sqrt(abar), math.sqrt(1.0 - abar)
    return alpha, sigma, math.log(alpha) - math.log(sigma)


def dpmpp_2m_step(denoise, diffusion, x, t: int, t_prev: int, last: tuple[int, torch.Tensor] | None = None, *,
                  clip=True) -> tuple[torch.Tensor, tuple[int, torch.Tensor]]:
    """One DPM-Solver++(2M) step from timestep t to t_prev < t (-1: to x_0). `last` is (timestep, x0 prediction) of
    the step before, None on the first step (first order, = DDIM with eta 0). Returns x_{t_prev} and the `last` to
    pass to the next step.

    With h = lambda_{t_prev} - lambda_t: first order x' = (sigma'/sigma) x + alpha' (1 - e^{-h}) x0; second order the
    same with x0 replaced by D = x0 + (x0 - x0_last) / (2r), r = (lambda_t - lambda_last) / h (the midpoint form, as
    diffusers' `solver_type="midpoint"`). Coefficients are computed in float64 from the float64 schedule."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    x0 = diffusion.interpret(denoise(x, tt), x, tt, clip=clip).x0
    if t_prev < 0:  # sigma' = 0: lambda' = inf, and the update is x0 whatever the order
        return x0.to(x.dtype), (t, x0)
    _, sigma, lam = _alpha_sigma_lambda(diffusion, t)
    alpha_p, sigma_p, lam_p = _alpha_sigma_lambda(diffusion, t_prev)
    h = lam_p - lam
    d = x0
    if last is not None:
        r = (lam - _alpha_sigma_lambda(diffusion, last[0])[2]) / h
        d = x0 + (x0 - last[1]) / (2.0 * r)
    x_prev = (sigma_p / sigma) * x + (alpha_p * -math.expm1(-h)) * d
    return x_prev.to(x.dtype), (t, x0)


def respaced(diffusion: GaussianDiffusion, ts: list[int]) -> GaussianDiffusion:
    """A diffusion whose chain is the timesteps `ts` of `diffusion` (ascending order internally)."""
    abar = diffusion._f64["alphas_cumprod"]
    keep = sorted(ts)
    betas, last = [], 1.0
    for t in keep:
        betas.append(1 - abar[t].item() / last)
        last = abar[t].item()
    return GaussianDiffusion(diffusion.config, betas=torch.tensor(betas, dtype=torch.float64))
