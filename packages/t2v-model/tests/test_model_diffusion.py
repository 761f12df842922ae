"""Our diffusion math against diffusers' schedulers (a test-only oracle)."""

import math
from fractions import Fraction

import pytest
import torch

from t2v_model import ConfigError, DiffusionConfig
from t2v_model.diffusion import GaussianDiffusion
from t2v_model.samplers import (
    ddim_sample,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    dpmpp_2m_sample,
    dpmpp_2m_step,
    respaced,
    timestep_schedule,
)

diffusers = pytest.importorskip("diffusers")
ATOL = 1e-5


def exact_tables(ref, ours):
    """Give the oracle our float64 schedule tables. diffusers keeps them in float32, where 1 - abar_t cancels
    catastrophically near t=0 (~1e-4 error at t=1); the tables themselves are compared in float32 separately."""
    ref.betas = ours._f64["betas"].clone()
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = ours._f64["alphas_cumprod"].clone()
    return ref


def oracle_kwargs(schedule):
    return dict(num_train_timesteps=1000, beta_schedule={"cosine": "squaredcos_cap_v2", "linear": "linear"}[schedule],
                beta_start=1e-4, beta_end=0.02, clip_sample=False)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_schedule_and_q_sample_match_diffusers(schedule):
    ours = GaussianDiffusion(DiffusionConfig(schedule=schedule))
    ref = diffusers.DDPMScheduler(**oracle_kwargs(schedule))
    assert torch.allclose(ours._get("alphas_cumprod", torch.device("cpu")), ref.alphas_cumprod, atol=ATOL)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 2, 5, 5, generator=g) * 2 - 1, torch.randn(4, 3, 2, 5, 5, generator=g)
    t = torch.tensor([0, 17, 500, 999])
    assert torch.allclose(ours.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), atol=ATOL)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_posterior_step_matches_diffusers(prediction):
    ours = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    ref = diffusers.DDPMScheduler(**oracle_kwargs("cosine"), variance_type="fixed_small",
                                  prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[prediction])
    exact_tables(ref, ours)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 2, 4, 4, generator=g)
    for t in [999, 600, 250, 10, 1, 0]:
        out = torch.randn(2, 3, 2, 4, 4, generator=g)
        seed = 100 + t
        expected = ref.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        got = ddpm_step(lambda _x, _t: out, ours, x, t, t, generator=torch.Generator().manual_seed(seed), clip=False)
        assert torch.allclose(got, expected, atol=ATOL), (prediction, t, (got - expected).abs().max())


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
def test_ddim_steps_match_diffusers(eta, spacing):
    ours = GaussianDiffusion(DiffusionConfig())
    ref = diffusers.DDIMScheduler(**oracle_kwargs("cosine"), set_alpha_to_one=True, timestep_spacing=spacing)
    ref.set_timesteps(25)
    exact_tables(ref, ours)
    ts = timestep_schedule(1000, 25, spacing)
    assert ts == ref.timesteps.tolist()
    abar = ours._get("alphas_cumprod", torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 3, 4, 4, generator=g)
    x_ref = x.clone()
    for i, t in enumerate(ts):
        out = torch.randn(2, 3, 3, 4, 4, generator=g)
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x_ref = ref.step(out, t, x_ref, eta=eta, generator=torch.Generator().manual_seed(i)).prev_sample
        x = ddim_step(lambda _x, _t: out, ours, x, t, t_prev, abar, eta=eta,
                      generator=torch.Generator().manual_seed(i), clip=False)
        assert torch.allclose(x, x_ref, atol=ATOL), (i, t, (x - x_ref).abs().max())


def test_respaced_ddpm_matches_diffusers_with_fewer_steps():
    ours = GaussianDiffusion(DiffusionConfig())
    ref = diffusers.DDPMScheduler(**oracle_kwargs("cosine"), variance_type="fixed_small", timestep_spacing="trailing")
    ref.set_timesteps(20)
    exact_tables(ref, ours)
    ts = timestep_schedule(1000, 20, "trailing")
    assert ts == ref.timesteps.tolist()
    sub = respaced(ours, ts)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 2, 4, 4, generator=g)
    x_ref = x.clone()
    for i, t in enumerate(ts):
        out = torch.randn(1, 3, 2, 4, 4, generator=g)
        x_ref = ref.step(out, t, x_ref, generator=torch.Generator().manual_seed(i)).prev_sample
        x = ddpm_step(lambda _x, _t: out, sub, x, len(ts) - 1 - i, t, generator=torch.Generator().manual_seed(i),
                      clip=False)
        assert torch.allclose(x, x_ref, atol=ATOL), (i, t)


PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # numpy 2 on a torch tensor
@pytest.mark.parametrize("steps, shift", [(5, 1.0), (10, 1.0), (25, 1.0), (48, 2.0)])
def test_dpmpp_2m_steps_match_diffusers(prediction, steps, shift):
    """Every intermediate x of DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler fed the same outputs.

    The oracle gets our betas (`trained_betas`, so any schedule and shift) and our timesteps: its own "trailing"
    spacing is ours for 5, 10, 25 steps, but for 111 of the step counts 1..1000 (48 among them) its float `np.arange`
    rounds some .5 ties the other way or adds a step at t=-1, so those are passed explicitly. As for DDIM, the oracle's
    tables (and here its sigmas, which it casts to float32) are our float64 ones and the run is in float64."""
    ours = GaussianDiffusion(DiffusionConfig(prediction=prediction, schedule_shift=shift))
    ref = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=ours._f64["betas"].numpy(), algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
        timestep_spacing="trailing", prediction_type=PREDICTION_TYPES[prediction])
    exact_tables(ref, ours)
    ts = timestep_schedule(1000, steps, "trailing")
    if steps == 48:
        ref.set_timesteps(timesteps=ts)
    else:
        ref.set_timesteps(steps)
    assert ref.timesteps.tolist() == ts
    abar = ours._f64["alphas_cumprod"][ts]
    ref.sigmas = torch.cat((((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)))  # float64 sigmas
    # eps at t=999 reads x0 = x / sqrt(abar) - sqrt(1/abar - 1) eps with both coefficients ~2e4 taken from the float32
    # tables (`interpret`): ~1e-3 in x0, ~2e-5 in x after the first step; v and x0 predictions stay under 1e-6
    atol = 5 * ATOL if prediction == "eps" else ATOL
    g = torch.Generator().manual_seed(6)
    shape = (2, 3, 2, 4, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x_ref, last = x.clone(), None
    for i, t in enumerate(ts):
        out = torch.randn(shape, generator=g, dtype=torch.float64)
        model = lambda _x, _t: out  # noqa: E731
        if prediction == "eps":
            # the eps that reads as an x0 guess in [-1, 1] at each side's own x: one fixed eps would turn a 1e-7
            # difference between the two x into alpha_t'/alpha_t more per step (x0 = (x - sigma eps) / alpha)
            x0_guess = out.clamp(-1, 1)
            model = lambda x_, _t: (x_ - abar[i].sqrt() * x0_guess) / (1 - abar[i]).sqrt()  # noqa: E731
        x_ref = ref.step(model(x_ref, t), t, x_ref).prev_sample
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        x, last = dpmpp_2m_step(model, ours, x, t, t_prev, last, clip=False)
        assert torch.allclose(x, x_ref, rtol=0, atol=atol), (i, t, (x - x_ref).abs().max())
    assert x.abs().max() > 0.5  # not trivially small


def test_dpmpp_2m_first_step_is_ddim():
    d = GaussianDiffusion(DiffusionConfig(prediction="v"))
    g = torch.Generator().manual_seed(7)
    x, out = torch.randn(2, 3, 2, 4, 4, generator=g), torch.randn(2, 3, 2, 4, 4, generator=g)
    got, (t, x0) = dpmpp_2m_step(lambda _x, _t: out, d, x, 999, 949)
    expected = ddim_step(lambda _x, _t: out, d, x, 999, 949, d._get("alphas_cumprod", torch.device("cpu")))
    assert t == 999 and torch.allclose(got, expected, atol=ATOL)
    assert torch.equal(x0, d.interpret(out, x, torch.full((2,), 999)).x0)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_dpmpp_2m_lands_closer_to_gaussian_data_than_ddim(prediction):
    """Data ~ N(mu, s^2) per pixel: the exact denoiser is E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + sigma^2) (x_t - a mu),
    so the only error left is the solver's. Both samplers map the noise affinely; at 10 steps DPM-Solver++ ends
    much nearer N(mu, s^2) (W2 ~0.02 against DDIM's ~0.07: DDIM shrinks the spread)."""
    mu, s = 0.2, 0.5
    d = GaussianDiffusion(DiffusionConfig(prediction=prediction))
    abar_all = d._f64["alphas_cumprod"]

    def denoise(x, t):
        abar = abar_all[t].reshape(-1, 1)
        a, sigma = abar.sqrt(), (1 - abar).sqrt()
        x0 = mu + a * s**2 / (a**2 * s**2 + sigma**2) * (x - a * mu)
        eps = (x - a * x0) / sigma
        return {"eps": eps, "x0": x0, "v": a * eps - sigma * x0}[prediction]

    def w2(sampler):  # 2-Wasserstein distance between the Gaussian fitted to the samples and N(mu, s^2)
        x = sampler(denoise, d, (4096, 8), steps=10, generator=torch.Generator().manual_seed(8), clip=False,
                    dtype=torch.float64)
        return math.hypot(x.mean().item() - mu, x.std().item() - s)

    dpm, ddim = w2(dpmpp_2m_sample), w2(ddim_sample)
    assert dpm < 0.5 * ddim, (dpm, ddim)
    assert dpm < 0.04


def test_parameterisations_round_trip():
    d = GaussianDiffusion(DiffusionConfig())
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.rand(3, 2, 4, generator=g) * 2 - 1, torch.randn(3, 2, 4, generator=g)
    t = torch.tensor([3, 400, 990])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.x0_from_eps(xt, t, eps), x0, atol=1e-4)
    assert torch.allclose(d.eps_from_x0(xt, t, x0), eps, atol=1e-4)
    assert torch.allclose(d.x0_from_v(xt, t, d.v_target(x0, t, eps)), x0, atol=1e-5)


def test_min_snr_weights_and_loss():
    d = GaussianDiffusion(DiffusionConfig(prediction="eps"))
    t = torch.tensor([0, 999])
    snr = d._get("snr", t.device)[t]
    w = d.min_snr_weight(t, 5.0)
    assert torch.allclose(w, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert w[0] < 1e-2 and w[1] == pytest.approx(1.0)  # low noise down-weighted, high noise kept

    class Zero(torch.nn.Module):
        def forward(self, x, t, text, tokens=None, token_mask=None, drop_text=None):
            return torch.zeros_like(x)

    x0 = torch.zeros(2, 3, 1, 2, 2)
    noise = torch.ones_like(x0)
    loss = GaussianDiffusion(DiffusionConfig()).training_loss(Zero(), x0, None, t=t, noise=noise, loss="l2")
    assert loss.item() == pytest.approx(1.0)  # zero prediction vs unit eps
    weighted = d.training_loss(Zero(), x0, None, t=t, noise=noise, min_snr_gamma=5.0)
    assert weighted.item() == pytest.approx(w.mean().item())


def test_snr_scale_sees_the_full_size_noisy_clip_average_pooled():
    """A half-size clip trained with snr_scale 4 sees at t exactly the 2x2 average of the full-size x_t (rescaled to
    unit variance), and its v target is that x_t's v (eps and x_0 weighted by its coefficients)."""
    d = GaussianDiffusion(DiffusionConfig(prediction="v"))
    g = torch.Generator().manual_seed(5)
    half = torch.rand(3, 3, 2, 4, 4, generator=g) * 2 - 1
    full = half.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 2x2 blocks: pooling recovers `half` exactly
    eps_full = torch.randn(full.shape, generator=g)
    pool = torch.nn.functional.avg_pool3d
    eps_half = 2 * pool(eps_full, (1, 2, 2))  # unit variance again
    t = torch.tensor([10, 500, 980])
    abar = d._get("alphas_cumprod", t.device)[t].reshape(-1, 1, 1, 1, 1)
    norm = (abar + (1 - abar) / 4).sqrt()  # std of the pooled x_t at unit-variance data
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, x, t, text, tokens=None, token_mask=None, drop_text=None):
            seen["xt"] = x
            return torch.zeros_like(x)

    loss = d.training_loss(Spy(), half, None, t=t, noise=eps_half, snr_scale=4.0, reduce=False)
    pooled_xt = pool(d.q_sample(full, t, eps_full), (1, 2, 2)) / norm
    assert torch.allclose(seen["xt"], pooled_xt, atol=1e-5)
    a, sigma = abar.sqrt() / norm, (1 - abar).sqrt() / 2 / norm  # that x_t's coefficients, a^2 + sigma^2 = 1
    v = a * eps_half - sigma * half
    assert torch.allclose(loss, v.square().flatten(1).mean(1), atol=1e-5)
    plain = d.training_loss(Spy(), half, None, t=t, noise=eps_half, snr_scale=1.0, reduce=False)
    assert torch.allclose(plain, d.v_target(half, t, eps_half).square().flatten(1).mean(1))
    each = d.training_loss(Spy(), half, None, t=t, noise=eps_half, snr_scale=torch.tensor([4.0, 1.0, 4.0]),
                           reduce=False)  # a scale per sample
    assert torch.allclose(each, torch.stack([loss[0], plain[1], loss[2]]))


def test_dynamic_thresholding():
    d = GaussianDiffusion(DiffusionConfig(dynamic_threshold=0.9))
    x = torch.linspace(-3, 3, 101).reshape(1, -1)
    y = d.threshold(x)
    assert y.abs().max() <= 1.0 + 1e-6 and y.abs().max() > 0.99
    small = torch.full((1, 10), 0.5)
    assert torch.equal(d.threshold(small), small)  # s clamps at 1: nothing inside [-1, 1] changes


def test_samplers_are_seeded_and_reach_the_data_for_a_perfect_denoiser():
    d = GaussianDiffusion(DiffusionConfig(prediction="x0"))
    target = torch.rand(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    oracle = lambda x, t: target  # noqa: E731  (a denoiser that always predicts the data)
    for sample in (
        lambda g: ddim_sample(oracle, d, target.shape, steps=10, generator=g),
        lambda g: ddim_sample(oracle, d, target.shape, steps=10, eta=1.0, generator=g),
        lambda g: ddpm_sample(oracle, d, target.shape, steps=30, generator=g),
        lambda g: dpmpp_2m_sample(oracle, d, target.shape, steps=10, generator=g),
    ):
        a = sample(torch.Generator().manual_seed(0))
        b = sample(torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
        assert torch.allclose(a, target, atol=1e-4)


def test_timestep_schedule_validation():
    assert timestep_schedule(1000, 4, "trailing") == [999, 749, 499, 249]
    assert timestep_schedule(10, 10) == list(range(9, -1, -1))
    with pytest.raises(ValueError, match="steps"):
        timestep_schedule(1000, 0)


def test_linspace_spacing_rounds_the_exact_grid():
    # float linspace misrounds the .5 ties for dozens of step counts (e.g. 27 steps of 1000)
    for steps in range(1, 1001):
        exact = [round(Fraction(999 * i, max(steps - 1, 1))) for i in range(steps)][::-1]
        assert timestep_schedule(1000, steps, "linspace") == exact, steps


def test_linear_schedule_rejects_too_few_timesteps():
    # the last beta is 20/T: at T <= 20 abar reaches 0 (or below) and sampling divides by it
    with pytest.raises(ConfigError, match="timesteps: the linear schedule"):
        DiffusionConfig(timesteps=20, schedule="linear").validate()
    DiffusionConfig(timesteps=20, schedule="cosine").validate()
    abar = GaussianDiffusion(DiffusionConfig(timesteps=21, schedule="linear"))._f64["alphas_cumprod"]
    assert abar[-1] > 0 and torch.isfinite(abar.rsqrt()).all()


@pytest.mark.parametrize("shift", [2.0, 4.0])
def test_schedule_shift_moves_log_snr_by_two_log_shift(shift):
    base = GaussianDiffusion(DiffusionConfig(schedule="cosine"))
    shifted = GaussianDiffusion(DiffusionConfig(schedule="cosine", schedule_shift=shift))
    assert torch.equal(GaussianDiffusion(DiffusionConfig(schedule_shift=1.0))._f64["betas"], base._f64["betas"])
    log_snr = lambda d: d._f64["snr"].log()  # noqa: E731
    interior = slice(1, 990)  # away from the max_beta clip at the very end
    diff = log_snr(shifted)[interior] - log_snr(base)[interior]
    assert torch.allclose(diff, torch.full_like(diff, -2 * math.log(shift)), atol=1e-6)
    # still a valid forward process: abar strictly decreasing from ~1 to ~0
    abar = shifted._f64["alphas_cumprod"]
    assert (abar[1:] < abar[:-1]).all() and abar[0] > 0.99 and abar[-1] < 1e-4
    with pytest.raises(Exception, match="schedule_shift"):
        DiffusionConfig(schedule_shift=0).validate()


def test_prior_fraction_draws_that_share_of_t_from_the_last_percent():
    d = GaussianDiffusion(DiffusionConfig())
    t = d.sample_timesteps(20000, torch.device("cpu"), torch.Generator().manual_seed(0), prior_fraction=0.3)
    late = (t >= 990).float().mean().item()
    assert abs(late - (0.3 + 0.7 * 0.01)) < 0.015
    assert t.min() >= 0 and t.max() <= 999
    plain = GaussianDiffusion(DiffusionConfig()).sample_timesteps(1000, torch.device("cpu"),
                                                                  torch.Generator().manual_seed(0))
    assert abs((plain >= 990).float().mean().item() - 0.01) < 0.01
    t0 = d.sample_timesteps(20000, torch.device("cpu"), torch.Generator().manual_seed(0), prior_fraction=0.0)
    assert abs((t0 >= 990).float().mean().item() - 0.01) < 0.01
