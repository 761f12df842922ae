"""Real-video evaluation metrics: FVD (Frechet distance of I3D Kinetics-400 features) and CLIPSIM (CLIP score).

    model = load_i3d(cfg.fvd_weights)                    # local file, or the cache (downloaded once when online)
    score = fvd(real_uint8, fake_uint8, model)          # lower is better
    sim = clip_score(fake_uint8, captions, cfg.clip_model)  # raw cosine in [-1, 1], higher is better

Videos are uint8 arrays or tensors (B, T, H, W, C) with C in (1, 3) (grayscale is repeated to RGB); `clip_score`
also takes a list of (T, H, W, C) clips of different lengths. A missing model raises `MetricUnavailable`, whose
one-line message says which file or id is missing, where to get it and which config key to set; the caller prints
it as a warning and goes on with the other metrics.

FVD follows StyleGAN-V, whose `i3d_torchscript.pt` is a TorchScript port of the TF-Hub I3D
(deepmind/i3d-kinetics-400/1) that the original FVD code uses: each clip is resized to 224x224 (bilinear, no crop,
as the reference code does), scaled to [-1, 1] and mapped to the 400 Kinetics logits averaged over time (pre-softmax).
The Gaussians are fitted with the unbiased covariance (np.cov), as StyleGAN-V and pytorch-fid do. The file is a
TorchScript archive, so it is loaded with `torch.jit.load` (the official format; no pickle, no `torch.load`).
cd-fvd is not used: it ships the TATS PyTorch I3D port loaded with a pickling `torch.load`, not the StyleGAN-V
TorchScript, pulls torchvision/einops/requests, cannot take a test model, and the part we need is ~40 lines here.

Clip length: the I3D stack divides time by 8 and then pools 2 steps, so it rejects clips shorter than 9 frames;
papers report FVD on 16 frames. `preprocess_i3d` therefore brings every clip to `frames` (16) frames: shorter clips
are stretched in time by repeating each frame (nearest-neighbour, order kept, so no jump from a loop seam), longer
clips keep their first 16 frames. Numbers from clips stretched this way are comparable with each other, not with
papers' 16-frame FVD. FVD also depends strongly on the number of clips (papers use 2,048+): with fewer clips than
the 400 feature dimensions the covariances are rank-deficient, which the distance handles but which biases it up.

CLIPSIM is the mean over videos of the mean over frames of cos(CLIP image embedding of the frame, CLIP text
embedding of the caption), reported as the raw cosine (papers report e.g. 0.2929 for ViT-B/32), not x100.
torchmetrics' CLIPScore is not used: it reports max(100 * cos, 0) per image (clipped and scaled, not CLIPSIM's raw
cosine), does not average per video, and would be a new dependency for ~20 lines of transformers calls.
Frames are preprocessed with the PIL CLIP image processor (bicubic resize + centre crop, as the original CLIP).
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

from t2v_model.errors import T2VError
from t2v_model.files import AtomicFile
from t2v_model.hub import OFFLINE_VARS, offline

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"  # StyleGAN-V's detector_url
I3D_FILENAME = "i3d_torchscript.pt"
I3D_SHA256: str | None = None  # unknown (no published checksum); when set, downloads are verified against it
I3D_SIZE = 224
FVD_FRAMES = 16
DOWNLOAD_TIMEOUT_S = 30.0
DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch32"


class MetricUnavailable(T2VError):
    """A metric's model is missing and cannot be fetched; the message is one line naming the file or id, where to
    get it and the config key to set. Callers warn and continue with the other metrics."""


# ------------------------------------------------------------------------------------------------ Frechet distance

def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D) with N >= 2."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_gaussian: features must be (N, D) with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("fit_gaussian: features contain NaN or inf")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Frechet (2-Wasserstein) distance of two Gaussians.

    (S1 S2)^(1/2) comes from scipy.linalg.sqrtm. When the product is singular (sqrtm warns or returns non-finite
    values, e.g. a feature that never varies), both covariances get `eps` added to their diagonal and the distance
    of those slightly widened Gaussians is returned (so identical inputs still give ~0, never -2 eps D).
    Imaginary parts from rounding are dropped; large ones (inputs that are not covariance matrices) raise."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {sigma2.shape}")
    covmean = _sqrtm(sigma1 @ sigma2)
    if covmean is None:
        offset = eps * np.eye(d)
        sigma1, sigma2 = sigma1 + offset, sigma2 + offset
        covmean = _sqrtm(sigma1 @ sigma2)
        if covmean is None:
            raise ValueError("frechet_distance: sqrtm(sigma1 @ sigma2) is not finite even with eps on the diagonal")
    if np.iscomplexobj(covmean):
        imag = float(np.abs(covmean.imag).max())
        if imag > 1e-3 * max(1.0, float(np.abs(covmean.real).max())):
            raise ValueError(f"frechet_distance: sqrtm(sigma1 @ sigma2) has an imaginary part of {imag:.3g} "
                             f"(sigma1 and sigma2 must be covariance matrices)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray | None:
    """scipy's matrix square root, or None when `a` is singular to it or the result is not finite."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(a)
    singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
    return None if singular or not np.isfinite(root).all() else root


# ------------------------------------------------------------------------------------------------------------- FVD

def default_cache_dir() -> Path:
    """$T2V_CACHE_DIR, else $XDG_CACHE_HOME/t2v, else ~/.cache/t2v."""
    if os.environ.get("T2V_CACHE_DIR"):
        return Path(os.environ["T2V_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "t2v"


def i3d_weights_path(weights: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """The local I3D TorchScript file: `weights` when given (it must exist), else <cache_dir>/fvd/i3d_torchscript.pt,
    downloaded from I3D_URL on first use unless offline(). Raises MetricUnavailable (one line) when neither works."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MetricUnavailable(f"FVD: I3D weights not found at {path} (evaluate.fvd_weights); "
                                    f"download {I3D_URL} to that path")
        return path
    path = Path(cache_dir or default_cache_dir()).expanduser() / "fvd" / I3D_FILENAME
    if path.is_file():
        return path
    if offline():
        raise MetricUnavailable(f"FVD: I3D weights {I3D_FILENAME} are not in {path.parent} and downloads are off "
                                f"({'/'.join(OFFLINE_VARS)}); download {I3D_URL} and set evaluate.fvd_weights to it")
    _download(I3D_URL, path, I3D_SHA256)
    return path


def _download(url: str, path: Path, sha256: str | None) -> None:
    """Fetch `url` to `path` all or nothing (a temp file beside it, renamed when complete), checking sha256 when
    known; any failure is MetricUnavailable and leaves no file behind."""
    print(f"downloading the FVD I3D weights from {url} to {path}", file=sys.stderr)
    try:
        digest = hashlib.sha256()
        with AtomicFile(path) as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                f.file.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise ValueError(f"sha256 {digest.hexdigest()} is not the expected {sha256}")
    except (OSError, ValueError) as e:  # URLError, timeouts, HTTP errors and unwritable caches are OSErrors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MetricUnavailable(f"FVD: cannot download I3D weights from {I3D_URL} to {path} ({first}); download it "
                                f"elsewhere and set evaluate.fvd_weights to the file") from None


class TorchScriptI3D(torch.nn.Module):
    """A loaded I3D TorchScript as a plain (B, 3, T, 224, 224) in [-1, 1] -> (B, D) module. StyleGAN-V's file has
    forward(x, rescale, resize, return_features): it is called with rescale=False, resize=False (preprocess_i3d
    did both) and return_features=True (the 400 logits, not the softmax); arguments a script lacks are not passed."""

    KWARGS = {"rescale": False, "resize": False, "return_features": True}

    def __init__(self, script: torch.jit.ScriptModule):
        super().__init__()
        self.script = script
        names = {a.name for a in script.forward.schema.arguments}
        self.kwargs = {k: v for k, v in self.KWARGS.items() if k in names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.script(x, **self.kwargs)


def load_i3d(weights: str | Path | None = None, device: str | torch.device = "cpu",
             cache_dir: str | Path | None = None) -> TorchScriptI3D:
    """The FVD feature network, in eval mode on `device` (see i3d_weights_path for where the file comes from)."""
    path = i3d_weights_path(weights, cache_dir)
    try:
        with warnings.catch_warnings():  # recent torch deprecates torch.jit; this file only exists as TorchScript
            warnings.filterwarnings("ignore", ".*torch.jit", FutureWarning)
            script = torch.jit.load(str(path), map_location=device)  # TorchScript archive: no pickle
    except Exception as e:  # a truncated or foreign file raises RuntimeError/ValueError from the TorchScript reader
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MetricUnavailable(f"FVD: cannot load I3D TorchScript {path} ({first}); fetch it again from {I3D_URL} "
                                f"(evaluate.fvd_weights)") from None
    return TorchScriptI3D(script).eval()


def _is_uint8(x: np.ndarray | torch.Tensor) -> bool:
    return x.dtype == torch.uint8 if isinstance(x, torch.Tensor) else x.dtype == np.uint8


def _as_videos(videos) -> np.ndarray | torch.Tensor:
    """Check a uint8 (B, T, H, W, C) batch with C in (1, 3)."""
    if not isinstance(videos, torch.Tensor):
        videos = np.asarray(videos)
    shape = tuple(videos.shape)
    if not _is_uint8(videos) or len(shape) != 5 or shape[-1] not in (1, 3) or 0 in shape:
        raise ValueError(f"videos must be uint8 (B, T, H, W, C) with C in (1, 3), got {videos.dtype} {shape}")
    return videos


def frame_indices(length: int, frames: int | None = FVD_FRAMES) -> list[int]:
    """Which of `length` frames make a `frames`-frame clip: the first `frames` of a long clip, each frame repeated
    in order (nearest-neighbour stretch) for a short one; all of them when frames is None."""
    if frames is None or length == frames:
        return list(range(length))
    if length > frames:
        return list(range(frames))
    return [i * length // frames for i in range(frames)]


def preprocess_i3d(videos_uint8, frames: int | None = FVD_FRAMES, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> float (B, 3, frames, 224, 224) in [-1, 1], the input the I3D expects: `frames`
    frames (see frame_indices), grayscale repeated to RGB, each frame resized straight to 224x224 without cropping
    (PyTorch bilinear with half-pixel centres and no antialias, as cd-fvd and the StyleGAN-V ports do; the original
    TF1 code's resize_bilinear samples without half-pixel centres, a small difference when upscaling small frames),
    then 2 x / 255 - 1."""
    v = _as_videos(videos_uint8)
    v = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
    b, t, h, w, c = v.shape
    v = v[:, frame_indices(t, frames)].to(device)
    t = v.shape[1]
    x = v.reshape(b * t, h, w, c).permute(0, 3, 1, 2).to(torch.float32)
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
    x = x / 127.5 - 1.0  # = 2 x / 255 - 1, exact at 0 and 255
    return x.reshape(b, t, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2).contiguous().to(dtype)


@torch.no_grad()
def i3d_features(videos_uint8, model: torch.nn.Module, batch_size: int = 8,
                 frames: int | None = FVD_FRAMES) -> np.ndarray:
    """(B, D) float64 features of uint8 (B, T, H, W, C) clips: preprocess_i3d, then `model`, any module or
    TorchScript mapping (B, 3, T, 224, 224) float in [-1, 1] to (B, D) (load_i3d's for real FVD), run on the
    device and dtype of its parameters, `batch_size` clips at a time."""
    videos = _as_videos(videos_uint8)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    out = []
    for i in range(0, videos.shape[0], batch_size):
        feats = model(preprocess_i3d(videos[i:i + batch_size], frames, device, dtype))
        if feats.ndim != 2 or feats.shape[0] != min(batch_size, videos.shape[0] - i):
            raise ValueError(f"i3d_features: the model must return (B, D) features, got {tuple(feats.shape)}")
        out.append(feats.to(torch.float64).cpu().numpy())
    return np.concatenate(out)


def fvd(real_uint8, fake_uint8, model: torch.nn.Module, batch_size: int = 8, frames: int | None = FVD_FRAMES) -> float:
    """Frechet video distance between uint8 (B, T, H, W, C) real and generated clips (at least 2 of each; give both
    the same length and frame rate) under `model` (load_i3d() for the I3D FVD). Lower is better; ~0 for identical
    sets."""
    real = i3d_features(real_uint8, model, batch_size, frames)
    fake = i3d_features(fake_uint8, model, batch_size, frames)
    return frechet_distance(*fit_gaussian(real), *fit_gaussian(fake))


# -------------------------------------------------------------------------------------------------------- CLIPSIM

def load_clip(model_id_or_dir: str | Path = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu"):
    """(CLIPModel in eval mode on `device`, tokenizer, PIL CLIP image processor) from a local directory or a hub id
    (the Hugging Face cache, or the network unless offline()). Raises MetricUnavailable with one line."""
    from transformers import AutoTokenizer, CLIPModel
    from transformers.utils import logging as hf_logging

    try:  # transformers >= 5: the PIL backend explicitly (the default one needs torchvision, and differs slightly)
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # transformers 4: CLIPImageProcessor is the PIL one
        from transformers import CLIPImageProcessor as ImageProcessor

    name = str(model_id_or_dir)
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and (isinstance(model_id_or_dir, Path) or name.startswith((".", "/", "~"))):
        raise MetricUnavailable(f"CLIPSIM: no CLIP model directory {path} (evaluate.clip_model: a local CLIP "
                                f"directory or a hub id such as {DEFAULT_CLIP_MODEL})")
    source, local_only = (str(path), True) if local else (name, offline())
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(source, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        processor = ImageProcessor.from_pretrained(source, local_files_only=local_only)
    except Exception as e:  # OSError, ValueError, HTTP errors... depending on what is missing
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if local:
            raise MetricUnavailable(f"CLIPSIM: cannot load a CLIP model from {path} ({first}); set evaluate.clip_model "
                                    f"to a CLIP directory (model, tokenizer, preprocessor)") from None
        how = "downloads are off" if local_only else "the download failed"
        raise MetricUnavailable(f"CLIPSIM: CLIP model {name!r} is not in the Hugging Face cache and {how} ({first}); "
                                f"fetch it once online or set evaluate.clip_model to a local CLIP directory") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval().requires_grad_(False), tokenizer, processor


def _embedding(out) -> torch.Tensor:
    """get_text/image_features return the projected tensor (transformers 4) or an output whose pooler_output it is."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_score(videos_uint8, captions: Sequence[str], model_id_or_dir: str | Path = DEFAULT_CLIP_MODEL,
               device: str | torch.device = "cpu", batch_size: int = 64) -> float:
    """CLIPSIM: mean over videos of the mean over frames of cos(image embedding, caption embedding), raw cosine in
    [-1, 1] (not x100). `videos_uint8`: uint8 (B, T, H, W, C) or a list of (T, H, W, C) clips; one caption per video
    (cut to the model's 77 tokens); `batch_size` frames per image forward pass."""
    clips = [v if isinstance(v, torch.Tensor) else np.asarray(v) for v in
             (_as_videos(videos_uint8) if not isinstance(videos_uint8, (list, tuple)) else videos_uint8)]
    for v in clips:
        if not _is_uint8(v) or v.ndim != 4 or v.shape[-1] not in (1, 3) or 0 in v.shape:
            raise ValueError(f"each video must be uint8 (T, H, W, C) with C in (1, 3), got {v.dtype} {tuple(v.shape)}")
    captions = list(captions)
    if len(captions) != len(clips) or not clips:
        raise ValueError(f"clip_score: need one caption per video and at least one video, got {len(captions)} "
                         f"captions for {len(clips)} videos")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    model, tokenizer, processor = load_clip(model_id_or_dir, device)
    max_len = model.config.text_config.max_position_embeddings
    text = []
    for i in range(0, len(captions), batch_size):
        tokens = tokenizer(captions[i:i + batch_size], padding=True, truncation=True, max_length=max_len,
                           return_tensors="pt").to(device)
        text.append(F.normalize(_embedding(model.get_text_features(**tokens)).float(), dim=-1))
    text = torch.cat(text)
    frames = [(k, f) for k, v in enumerate(clips) for f in (v.cpu().numpy() if isinstance(v, torch.Tensor) else v)]
    sums = torch.zeros(len(clips), dtype=torch.float64)
    for i in range(0, len(frames), batch_size):
        chunk = frames[i:i + batch_size]
        images = [np.repeat(f, 3, axis=-1) if f.shape[-1] == 1 else f for _, f in chunk]
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(device)
        image = F.normalize(_embedding(model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        owner = torch.tensor([k for k, _ in chunk], device=image.device)
        sums.index_add_(0, owner.cpu(), (image * text[owner]).sum(-1).double().cpu())
    lengths = torch.tensor([len(v) for v in clips], dtype=torch.float64)
    return float((sums / lengths).mean())
