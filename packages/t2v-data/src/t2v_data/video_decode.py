"""Decoding video files (mp4/webm/gif) to fixed-geometry uint8 clips with the ffmpeg binary bundled in
imageio-ffmpeg: square pixels, resample to the target fps, aspect-preserving resize to cover the frame,
centre crop, then pick the clip's frames."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from t2v_model.errors import DataError

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm")  # what the folder and MSR-VTT sources look for

# imageio-ffmpeg warns on every file that the output size differs from the source: that is the point here
logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)


def decode_clip(
    path: str | Path, frames: int, height: int, width: int, fps: int, sampling: str = "spread"
) -> tuple[np.ndarray, dict]:
    """uint8 (frames, height, width, 3) and facts about the source {duration, source_fps, source_size,
    decoded_frames, frame_indices}. `sampling`: "spread" = `frames` frames evenly over the whole clip
    (decoded at `fps`); "window" = `frames` consecutive frames at `fps` from the middle of the clip.
    Clips with fewer decoded frames than needed (but at least 2) repeat frames (evenly). Raises DataError when
    unreadable, without a video stream, or shorter than 2 frames."""
    import imageio_ffmpeg

    vf = (
        f"scale='trunc(iw*sar/2)*2':ih,setsar=1,fps={fps},"
        f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=area,crop={width}:{height}"
    )
    try:
        reader = imageio_ffmpeg.read_frames(str(path), output_params=["-vf", vf, "-an"])
        meta = next(reader)
        decoded = [np.frombuffer(buf, dtype=np.uint8) for buf in reader]
    except Exception as e:  # imageio-ffmpeg raises RuntimeError/OSError/StopIteration with ffmpeg's stderr
        text = str(e)
        if "Stream #" in text and "Video:" not in text:  # ffmpeg listed the file's streams: none is video
            raise DataError(f"{path}: no video stream") from None
        reason = (text.strip().splitlines() or [type(e).__name__])[-1][:200]
        raise DataError(f"{path}: unreadable video ({reason})") from None
    if not decoded:
        raise DataError(f"{path}: no frames decoded")
    if len(decoded) < 2:  # padding one frame would make a static clip under a caption that may describe motion
        raise DataError(f"{path}: too short (1 frame)")
    clip = np.stack(decoded).reshape(len(decoded), height, width, 3)
    n = len(clip)
    if sampling == "spread" or n <= frames:
        idx = np.linspace(0, n - 1, frames).round().astype(int)
    elif sampling == "window":
        first = (n - frames) // 2
        idx = np.arange(first, first + frames)
    else:
        raise ValueError(f"unknown sampling {sampling!r}")
    info = {
        "duration": meta.get("duration"),
        "source_fps": meta.get("fps"),
        "source_size": list(meta.get("source_size") or []),
        "decoded_frames": n,
        "frame_indices": idx.tolist(),
    }
    return np.ascontiguousarray(clip[idx]), info
