"""Video files to fixed-geometry uint8 clips at real speed, with the ffmpeg binary bundled in imageio-ffmpeg.

A file (or its [start, end) span) is decoded once at the target fps, square pixels, aspect-preserving resize to cover
the frame, centre crop. Then either
- "clips": windows of `frames` consecutive frames (real speed: they play at `fps`), several per video if asked, none
  crossing a shot cut (`scene_cuts`); or
- "spread": `frames` frames evenly over the whole decoded span (a time-lapse; its true, effective fps is recorded).
Each clip carries its effective fps and its time span in the source.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from t2v_model.errors import DataError

# every container the bundled ffmpeg reads that people keep videos in; the folder source ingests these (or rejects
# them with ffmpeg's reason) and lists any other file in rejects.jsonl as not a video
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".m2ts", ".wmv",
                  ".flv", ".3gp", ".ogv")
HIST_BINS = 8  # per RGB channel: 512-bin colour histograms for the scene-change score
CUT_PEAK_RATIO = 2.5  # a cut stands out from its neighbours; a fast pan or a flash raises them all

# imageio-ffmpeg warns on every file that the output size differs from the source: that is the point here
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


@dataclass
class Decoded:
    frames: np.ndarray  # uint8 (n, H, W, 3), at `fps`
    fps: float
    start: float  # seconds into the file of frames[0]
    duration: float | None  # of the whole file, as ffmpeg reports it
    source_fps: float | None
    source_size: list[int]


@dataclass
class Clip:
    video: np.ndarray  # uint8 (T, H, W, 3)
    fps: float  # the rate it plays at real speed
    span: tuple[float, float]  # [start, end) seconds in the source file
    indices: list[int]  # of the decoded frames it is made of


def decode(path: str | Path, height: int, width: int, fps: float, start: float | None = None,
           end: float | None = None) -> Decoded:
    """The whole file (or its [start, end) seconds) at `fps`, resized to cover height x width and centre-cropped.
    DataError when unreadable, without a video stream, or with fewer than 2 frames."""
    import imageio_ffmpeg

    vf = (
        f"scale='trunc(iw*sar/2)*2':ih,setsar=1,fps={fps},"
        f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=area,crop={width}:{height}"
    )
    seek = (["-ss", f"{start:.3f}"] if start else []) + (["-to", f"{end:.3f}"] if end is not None else [])
    try:
        reader = imageio_ffmpeg.read_frames(str(path), input_params=seek, output_params=["-vf", vf, "-an"])
        meta = next(reader)
        decoded = [np.frombuffer(buf, dtype=np.uint8) for buf in reader]
    except Exception as e:  # imageio-ffmpeg raises RuntimeError/OSError/StopIteration with ffmpeg's stderr
        text = str(e)
        if "Stream #" in text and "Video:" not in text:  # ffmpeg listed the file's streams: none is video
            raise DataError(f"{path}: no video stream") from None
        reason = (text.strip().splitlines() or [type(e).__name__])[-1][:200]
        raise DataError(f"{path}: unreadable video ({reason})") from None
    if not decoded:
        raise DataError(f"{path}: no frames decoded" + (f" between {start} s and {end} s" if start or end else ""))
    # one source frame would make a static clip under a caption that may describe motion; resampling to fps would
    # hide it (a 1-frame 1 fps file decodes to 8 identical frames at 8 fps), so the source's own count decides
    source_frames = (meta.get("duration") or 0) * (meta.get("fps") or 0)
    if len(decoded) < 2 or (start is None and end is None and 0 < source_frames < 1.5):
        raise DataError(f"{path}: too short (1 frame)")
    frames = np.stack(decoded).reshape(len(decoded), height, width, 3)
    return Decoded(frames, float(fps), float(start or 0.0), meta.get("duration"), meta.get("fps"),
                   list(meta.get("source_size") or []))


def scene_scores(frames: np.ndarray) -> np.ndarray:
    """(n-1,) change between consecutive frames: the total-variation distance of their 512-bin colour histograms, in
    [0, 1]. Colour distributions change little under motion and a lot at a shot cut: on the shipped clips, cuts
    score 0.3-0.9 and in-shot frames (pans, a cyclist crossing the frame) at most 0.12 at 8 fps."""
    q = frames.astype(np.int32) * HIST_BINS // 256
    index = (q[..., 0] * HIST_BINS + q[..., 1]) * HIST_BINS + q[..., 2]
    hist = np.stack([np.bincount(f.ravel(), minlength=HIST_BINS ** 3) for f in index]).astype(np.float64)
    hist /= hist.sum(axis=1, keepdims=True)
    return 0.5 * np.abs(np.diff(hist, axis=0)).sum(axis=1)


def scene_cuts(frames: np.ndarray, threshold: float | None) -> list[int]:
    """Indices i with a shot cut between frames i and i+1: a scene score above `threshold` that is also a peak,
    CUT_PEAK_RATIO times the median of the two scores on either side. None or 0: no detection."""
    if not threshold or len(frames) < 2:
        return []
    s = scene_scores(frames)
    cuts = []
    for i, score in enumerate(s):
        around = np.concatenate([s[max(0, i - 2):i], s[i + 1:i + 3]])
        if score > threshold and score > CUT_PEAK_RATIO * (np.median(around) if len(around) else 0.0):
            cuts.append(i)
    return cuts


def clip_starts(n: int, length: int, cuts: list[int], count: int, stride: int | None) -> list[int]:
    """Where up to `count` windows of `length` consecutive frames start among `n`, none containing a cut. With
    `stride` (frames) the candidate starts of each shot are `stride` apart; without, every frame. The chosen starts
    are spread evenly over the candidates (one clip: the middle one), in time order."""
    bounds = [0, *[c + 1 for c in cuts], n]
    candidates = []
    for a, b in zip(bounds, bounds[1:]):
        candidates += range(a, b - length + 1, stride or 1)
    if len(candidates) <= count:
        return candidates
    return [candidates[int((i + 0.5) * len(candidates) / count)] for i in range(count)]


def real_speed_clips(d: Decoded, frames: int, count: int = 1, stride_seconds: float | None = None,
                     scene_threshold: float | None = None) -> list[Clip]:
    """Up to `count` clips of `frames` consecutive decoded frames, each within one shot; [] when no shot is long
    enough (see why_no_clip)."""
    stride = max(1, round(stride_seconds * d.fps)) if stride_seconds else None
    cuts = scene_cuts(d.frames, scene_threshold)
    out = []
    for s in clip_starts(len(d.frames), frames, cuts, count, stride):
        idx = list(range(s, s + frames))
        out.append(Clip(d.frames[s:s + frames].copy(), d.fps, _span(d, idx[0], idx[-1] + 1), idx))
    return out


def why_no_clip(d: Decoded, frames: int, scene_threshold: float | None) -> str:
    """The reject reason when real_speed_clips found no window."""
    cuts = scene_cuts(d.frames, scene_threshold)
    bounds = [0, *[c + 1 for c in cuts], len(d.frames)]
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    need = f"a clip needs {frames} frames at {d.fps:g} fps ({frames / d.fps:.2f} s)"
    if cuts:
        return f"no shot long enough: {need}, the longest of {len(cuts) + 1} shots is {longest / d.fps:.2f} s"
    return f"too short: {need}, it has {len(d.frames)} ({len(d.frames) / d.fps:.2f} s)"


def spread_clip(d: Decoded, frames: int) -> Clip:
    """`frames` frames evenly over the whole decoded span (a time-lapse of the video, crossing any cuts). A video with
    fewer decoded frames repeats some. Its effective fps is what makes it play at real speed."""
    n = len(d.frames)
    idx = np.linspace(0, n - 1, frames).round().astype(int).tolist()
    effective = (frames - 1) * d.fps / (idx[-1] - idx[0])  # n >= 2, so idx[-1] > idx[0]
    return Clip(np.ascontiguousarray(d.frames[idx]), effective, _span(d, idx[0], idx[-1] + 1), idx)


def _span(d: Decoded, first: int, stop: int) -> tuple[float, float]:
    return round(d.start + first / d.fps, 3), round(d.start + stop / d.fps, 3)
