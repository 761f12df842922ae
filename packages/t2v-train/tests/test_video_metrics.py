"""FVD and CLIPSIM (t2v_train.video_metrics) offline: the Frechet distance against closed forms, the I3D feature path
with a tiny randomly initialised 3D-conv net in StyleGAN-V's TorchScript interface, CLIPSIM with a tiny random CLIP
saved to a temp dir, and the one-line MetricUnavailable errors when weights are missing."""

from __future__ import annotations

import io
import os
import time
import urllib.error

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from t2v_model.errors import T2VError
from t2v_train import video_metrics as vm
from t2v_train.video_metrics import (
    MetricUnavailable,
    TorchScriptI3D,
    clip_score,
    fit_gaussian,
    frame_indices,
    frechet_distance,
    fvd,
    i3d_features,
    load_i3d,
    preprocess_i3d,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")  # the real I3D is TorchScript


# ------------------------------------------------------------------------------------------------ Frechet distance

def closed_form_diagonal(mu1, s1, mu2, s2) -> float:
    return float(np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2)))


def test_frechet_is_zero_for_identical_sets_also_rank_deficient():
    rng = np.random.default_rng(0)
    for n, d in ((200, 16), (8, 16)):  # (8, 16): fewer samples than dimensions, a singular covariance
        mu, sigma = fit_gaussian(rng.standard_normal((n, d)) * 3 + 1)
        assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (d, d)
        assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-6 * np.trace(2 * sigma)


def test_frechet_is_symmetric():
    rng = np.random.default_rng(1)
    a = fit_gaussian(rng.standard_normal((100, 10)))
    b = fit_gaussian(rng.standard_normal((100, 10)) * 2 + 0.5)
    assert frechet_distance(*a, *b) == pytest.approx(frechet_distance(*b, *a), rel=1e-9)
    assert frechet_distance(*a, *b) > 0


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 3.0]), np.array([1.0, 1.0, 0.0, -1.0])
    s1, s2 = np.array([1.0, 4.0, 0.25, 9.0]), np.array([2.0, 1.0, 0.25, 0.5])
    expected = closed_form_diagonal(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1)) == pytest.approx(0, abs=1e-12)


def test_frechet_matches_the_eigenvalue_form_for_full_covariances():
    """Tr (S1 S2)^(1/2) = sum of the square roots of the (real, non-negative) eigenvalues of S1 S2."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real).sum()
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_sampled_features_converges_to_the_closed_form():
    rng = np.random.default_rng(3)
    mu1, mu2 = np.array([0.0, 0.5, 1.0, -1.0]), np.array([0.3, 0.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 0.5, 0.5, 3.0])
    expected = closed_form_diagonal(mu1, s1, mu2, s2)
    errors = []
    for n in (200, 50_000):
        x = mu1 + rng.standard_normal((n, 4)) * np.sqrt(s1)
        y = mu2 + rng.standard_normal((n, 4)) * np.sqrt(s2)
        errors.append(abs(frechet_distance(*fit_gaussian(x), *fit_gaussian(y)) - expected))
    assert errors[1] < errors[0] and errors[1] < 0.02 * expected


def test_frechet_with_a_feature_that_never_varies():
    """A constant feature makes S1 S2 exactly singular (scipy 1.17 warns and the eps fallback runs)."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((500, 5)), rng.standard_normal((500, 5)) * 2 + 1
    x[:, 0] = y[:, 0] = 7.0
    a, b = fit_gaussian(x), fit_gaussian(y)
    assert abs(frechet_distance(*a, *a)) < 1e-9
    reduced = frechet_distance(a[0][1:], a[1][1:, 1:], b[0][1:], b[1][1:, 1:])  # the same without the constant
    assert frechet_distance(*a, *b) == pytest.approx(reduced, rel=1e-4)


def test_frechet_eps_fallback_compares_the_widened_gaussians(monkeypatch):
    """When sqrtm fails (non-finite), S1 + eps I and S2 + eps I are compared: still exact for diagonal inputs."""
    real_sqrtm, calls = vm.scipy.linalg.sqrtm, []

    def first_call_fails(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(vm.scipy.linalg, "sqrtm", first_call_fails)
    mu1, mu2, s1, s2 = np.zeros(3), np.ones(3), np.array([1.0, 0.0, 2.0]), np.array([0.5, 0.0, 2.0])
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), eps=1e-3)
    assert len(calls) == 2 and got == pytest.approx(closed_form_diagonal(mu1, s1 + 1e-3, mu2, s2 + 1e-3), rel=1e-9)
    calls.clear()
    assert frechet_distance(mu1, np.diag(s1), mu1, np.diag(s1), eps=1e-3) == pytest.approx(0, abs=1e-12)


def test_frechet_rejects_what_is_not_a_pair_of_gaussians():
    with pytest.raises(ValueError, match="imaginary part") as info:
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        fit_gaussian(np.zeros((1, 4)))


# ------------------------------------------------------------------------------------------------------------- I3D

class Plain(torch.nn.Module):
    """Any module mapping the preprocessed clips to (B, D): what i3d_features accepts besides load_i3d's."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, return_features=True)


def squares(n: int, seed: int, frames: int = 8, size: int = 32) -> np.ndarray:
    """n clips of a coloured square moving right on a dark background (uint8 (n, frames, size, size, 3))."""
    rng = np.random.default_rng(seed)
    v = np.full((n, frames, size, size, 3), 20, np.uint8)
    for i in range(n):
        color, y, x0 = rng.integers(60, 256, 3), rng.integers(0, size - 8), rng.integers(0, 8)
        for t in range(frames):
            v[i, t, y:y + 8, x0 + 2 * t:x0 + 2 * t + 8] = color
    return v


def test_frame_indices_stretch_short_clips_and_cut_long_ones():
    assert frame_indices(8, 16) == [t // 2 for t in range(16)]
    assert frame_indices(16, 16) == list(range(16))
    assert frame_indices(20, 16) == list(range(16))
    five = frame_indices(5, 16)
    assert len(five) == 16 and five == sorted(five) and set(five) == set(range(5))
    assert frame_indices(8, None) == list(range(8))


def test_preprocess_8_frame_32px_clips_to_16_frames_224px_in_minus_1_1():
    levels = np.linspace(0, 255, 8).round().astype(np.uint8)  # frame t is one grey level, black to white
    v = np.broadcast_to(levels[None, :, None, None, None], (2, 8, 32, 32, 3)).copy()
    v[1, :, :, 16:] = 255 - v[1, :, :, 16:]  # clip 1: right half inverted
    x = preprocess_i3d(v)
    assert x.shape == (2, 3, 16, 224, 224) and x.dtype == torch.float32
    expected = torch.tensor(levels[[t // 2 for t in range(16)]], dtype=torch.float32) * 2 / 255 - 1
    assert torch.allclose(x[0], expected[None, :, None, None].expand(3, 16, 224, 224), atol=1e-6)
    assert torch.allclose(x[0, :, 0], torch.tensor(-1.0)) and torch.allclose(x[0, :, -1], torch.tensor(1.0))
    # a resize, not a crop or a pad: the left/right halves stay the halves (last frame: white | black)
    last = x[1, :, -1]
    assert torch.allclose(last[:, :, :100], torch.tensor(1.0)) and torch.allclose(last[:, :, 124:], torch.tensor(-1.0))
    gray = preprocess_i3d(v[:, :, :, :, :1])
    assert torch.equal(gray, x)  # grayscale is repeated to RGB
    assert torch.equal(preprocess_i3d(torch.from_numpy(v)), x)  # tensors as numpy arrays
    with pytest.raises(ValueError, match="uint8"):
        preprocess_i3d(v.astype(np.float32))


def test_i3d_features_shape_determinism_and_batching(tiny_i3d):
    v = squares(5, seed=0)
    feats = i3d_features(v, Plain(tiny_i3d), batch_size=2)
    assert feats.shape == (5, tiny_i3d.logits.out_channels) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert np.array_equal(feats, i3d_features(v, Plain(tiny_i3d), batch_size=2))
    assert np.allclose(feats, i3d_features(v, Plain(tiny_i3d), batch_size=5), rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats[0], feats[1])
    with pytest.raises(RuntimeError):  # why clips are stretched: the I3D-like stack rejects 8 frames as they are
        i3d_features(v, Plain(tiny_i3d), frames=None)


def test_load_i3d_from_a_local_torchscript_file(tiny_i3d, i3d_file):
    model = load_i3d(i3d_file)
    assert isinstance(model, TorchScriptI3D) and not model.training
    assert model.kwargs == {"rescale": False, "resize": False, "return_features": True}
    v = squares(3, seed=1)
    feats = i3d_features(v, model, batch_size=3)
    assert np.allclose(feats, i3d_features(v, Plain(tiny_i3d), batch_size=3), rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats.sum(1), 1)  # the features, not the softmax
    traced = torch.jit.trace(Plain(tiny_i3d), preprocess_i3d(v[:1]), check_trace=False)  # plain forward(x)
    assert np.allclose(i3d_features(v, TorchScriptI3D(traced)), feats, rtol=1e-5, atol=1e-6)


def test_fvd_is_zero_for_the_same_clips_and_large_for_different_ones(tiny_i3d):
    model = Plain(tiny_i3d)
    real, other_real = squares(12, seed=2), squares(12, seed=3)
    noise = np.random.default_rng(4).integers(0, 256, real.shape, dtype=np.uint8)
    same = fvd(real, real, model, batch_size=6)
    close = fvd(real, other_real, model, batch_size=6)
    far = fvd(real, noise, model, batch_size=6)
    assert abs(same) < 1e-6 * far
    assert 0 < close < far


def test_missing_i3d_weights_offline_fail_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("T2V_OFFLINE", "1")
    monkeypatch.setattr(vm.urllib.request, "urlopen", lambda *a, **k: pytest.fail("tried the network offline"))
    start = time.perf_counter()
    with pytest.raises(MetricUnavailable) as info:
        load_i3d(cache_dir=tmp_path)
    assert time.perf_counter() - start < 1
    msg = str(info.value)
    assert "\n" not in msg and "i3d_torchscript.pt" in msg and vm.I3D_URL in msg and "evaluate.fvd_weights" in msg
    with pytest.raises(MetricUnavailable) as info:
        load_i3d(tmp_path / "nowhere.pt")
    msg = str(info.value)
    assert "\n" not in msg and "nowhere.pt" in msg and vm.I3D_URL in msg and "evaluate.fvd_weights" in msg
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torchscript archive")
    with pytest.raises(MetricUnavailable, match="cannot load I3D TorchScript") as info:
        load_i3d(junk)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, T2VError)  # one line and exit 1 where a pipeline does not catch it


def test_i3d_download_into_the_cache(tmp_path, monkeypatch, i3d_file):
    """Online without a local file: fetched once into <cache>/fvd/, all or nothing (network replaced by a stub)."""
    for var in vm.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    data = i3d_file.read_bytes()
    calls = []

    def failing(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(vm.urllib.request, "urlopen", failing)
    with pytest.raises(MetricUnavailable, match="cannot download I3D weights") as info:
        load_i3d(cache_dir=tmp_path)
    assert "\n" not in str(info.value) and "evaluate.fvd_weights" in str(info.value)
    assert calls == [(vm.I3D_URL, vm.DOWNLOAD_TIMEOUT_S)] and not list(tmp_path.rglob("*.pt*"))

    monkeypatch.setattr(vm.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(data))
    monkeypatch.setattr(vm, "I3D_SHA256", "0" * 64)
    with pytest.raises(MetricUnavailable, match="sha256"):
        load_i3d(cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.pt*"))
    import hashlib

    monkeypatch.setattr(vm, "I3D_SHA256", hashlib.sha256(data).hexdigest())
    model = load_i3d(cache_dir=tmp_path)
    assert (tmp_path / "fvd" / "i3d_torchscript.pt").read_bytes() == data and isinstance(model, TorchScriptI3D)
    monkeypatch.setattr(vm.urllib.request, "urlopen", lambda *a, **k: pytest.fail("downloaded twice"))
    load_i3d(cache_dir=tmp_path)


# -------------------------------------------------------------------------------------------------------- CLIPSIM

def reference_clipsim(videos: list[np.ndarray], captions: list[str], model_dir) -> float:
    """The definition, one video at a time: mean over videos of mean over frames of the cosine."""
    model, tokenizer, processor = vm.load_clip(model_dir)
    per_video = []
    with torch.no_grad():
        for video, caption in zip(videos, captions, strict=True):
            t = vm._embedding(model.get_text_features(**tokenizer([caption], return_tensors="pt")))
            frames = [np.repeat(f, 3, -1) if f.shape[-1] == 1 else f for f in video]
            i = vm._embedding(model.get_image_features(**processor(images=frames, return_tensors="pt")))
            per_video.append(F.cosine_similarity(i, t).mean().item())
    return float(np.mean(per_video))


def test_clip_score_with_a_tiny_random_clip(tiny_clip):
    videos = squares(3, seed=5, frames=4)
    captions = ["a red square moving right", "a green square", "blue"]
    score = clip_score(videos, captions, tiny_clip)
    assert isinstance(score, float) and np.isfinite(score) and -1 <= score <= 1
    assert clip_score(videos, captions, tiny_clip) == score  # deterministic
    assert clip_score(videos, captions, str(tiny_clip), batch_size=1) == pytest.approx(score, abs=1e-6)
    assert score == pytest.approx(reference_clipsim(list(videos), captions, tiny_clip), abs=1e-6)
    # clips of different lengths (and grayscale): each video weighs the same, not each frame
    clips = [videos[0, :1], videos[1], videos[2, :, :, :, :1]]
    mixed = clip_score(clips, captions, tiny_clip, batch_size=3)
    assert mixed == pytest.approx(reference_clipsim(clips, captions, tiny_clip), abs=1e-6)
    with pytest.raises(ValueError, match="one caption per video"):
        clip_score(videos, captions[:2], tiny_clip)


def test_clip_model_missing_offline_fails_fast_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    videos = squares(1, seed=6, frames=2)
    start = time.perf_counter()
    with pytest.raises(MetricUnavailable) as info:
        clip_score(videos, ["a square"], "t2v-test/definitely-not-a-cached-clip")
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert "\n" not in msg and "t2v-test/definitely-not-a-cached-clip" in msg and "evaluate.clip_model" in msg
    with pytest.raises(MetricUnavailable) as info:
        clip_score(videos, ["a square"], tmp_path / "no-such-clip")
    msg = str(info.value)
    assert "\n" not in msg and "no-such-clip" in msg and "evaluate.clip_model" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetricUnavailable, match="cannot load a CLIP model") as info:
        clip_score(videos, ["a square"], tmp_path / "empty")
    assert "\n" not in str(info.value)
