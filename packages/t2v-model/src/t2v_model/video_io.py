"""Writing generated videos: animated GIF (Pillow), H.264 MP4 (the ffmpeg binary shipped in imageio-ffmpeg) and
contact-sheet PNGs. Videos are uint8 arrays/tensors (T, H, W, C); every writer goes through a temp file + rename."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .files import AtomicFile

VIDEO_FORMATS = (".gif", ".mp4", ".png")  # the extensions save_video / save_grid write


def _as_uint8(video) -> np.ndarray:
    arr = video.detach().cpu().numpy() if hasattr(video, "detach") else np.asarray(video)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"video must be uint8 (T, H, W, C) with C in (1, 3), got {arr.dtype} {arr.shape}")
    return arr if arr.shape[-1] == 3 else np.repeat(arr, 3, axis=-1)


def _atomic(path: Path, write) -> Path:
    """`write(tmp_path)` fills a temp file that becomes `path` when it is complete."""
    with AtomicFile(path) as f:
        write(f.tmp)
    return path


def save_gif(path: str | Path, video, fps: int = 8, scale: int = 1) -> Path:
    frames = [Image.fromarray(f) for f in _upscale(_as_uint8(video), scale)]

    def write(tmp: Path):
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)

    return _atomic(Path(path), write)


def save_mp4(path: str | Path, video, fps: int = 8, scale: int = 1) -> Path:
    """H.264 (yuv420p, so every player opens it); frames are upscaled to even sizes as the codec requires."""
    import imageio_ffmpeg

    arr = _upscale(_as_uint8(video), scale)
    _, h, w, _ = arr.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        arr = np.pad(arr, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")

    def write(tmp: Path):
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (arr.shape[2], arr.shape[1]), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            macro_block_size=1, output_params=["-crf", "18", "-f", "mp4"], ffmpeg_log_level="error",
        )
        writer.send(None)
        for frame in arr:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    return _atomic(Path(path), write)


def contact_sheet(videos, pad: int = 2, scale: int = 1) -> np.ndarray:
    """One row per video, one column per frame: (rows*(H+pad), T*(W+pad), 3) uint8 on a mid-grey background."""
    vids = [_upscale(_as_uint8(v), scale) for v in videos]
    t, h, w, _ = vids[0].shape
    sheet = np.full((len(vids) * (h + pad) + pad, t * (w + pad) + pad, 3), 128, dtype=np.uint8)
    for r, v in enumerate(vids):
        for c in range(min(t, len(v))):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            sheet[y : y + h, x : x + w] = v[c]
    return sheet


def save_png(path: str | Path, image: np.ndarray) -> Path:
    return _atomic(Path(path), lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def save_video(path: str | Path, video, fps: int = 8, scale: int = 4) -> list[Path]:
    """Write `video` by extension (any case): `.gif`, `.mp4` or `.png` (contact sheet); no extension: all three."""
    path = Path(path)
    writers = {".gif": lambda p: save_gif(p, video, fps, scale), ".mp4": lambda p: save_mp4(p, video, fps, scale),
               ".png": lambda p: save_png(p, contact_sheet([video], scale=scale))}
    ext = output_extension(path)
    if ext:
        return [writers[ext](path)]
    return [writer(path.with_suffix(e)) for e, writer in writers.items()]


def save_grid(path: str | Path, videos, fps: int = 8, scale: int = 4, columns: int | None = None) -> list[Path]:
    """Tile several videos into one animated grid in the path's format (`.gif` or `.mp4`, no extension: both) and
    write their contact sheet next to it (`.png`; the only output for a `.png` path)."""
    vids = [_as_uint8(v) for v in videos]
    n = len(vids)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    t, h, w, _ = vids[0].shape
    grid = np.zeros((t, rows * h, cols * w, 3), dtype=np.uint8)
    for i, v in enumerate(vids):
        r, c = divmod(i, cols)
        grid[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = v
    path = Path(path)
    ext = output_extension(path)
    animated = {".gif": save_gif, ".mp4": save_mp4}
    out = [write(path if ext else path.with_suffix(e), grid, fps, scale)
           for e, write in animated.items() if ext in (e, "")]
    out.append(save_png(path if ext == ".png" else path.with_suffix(".png"), contact_sheet(vids, scale=scale)))
    return out


def output_extension(path: Path) -> str:
    """The lower-case extension of an output path ("" for none); ValueError if there is no writer for it."""
    ext = path.suffix.lower()
    if ext and ext not in VIDEO_FORMATS:
        raise ValueError(f"{path}: unsupported extension {path.suffix!r} ({', '.join(VIDEO_FORMATS)}, or none for all)")
    return ext


def _upscale(arr: np.ndarray, scale: int) -> np.ndarray:
    if scale < 1:
        raise ValueError(f"scale: must be >= 1, got {scale}")
    if scale == 1:
        return arr
    return arr.repeat(scale, axis=1).repeat(scale, axis=2)
