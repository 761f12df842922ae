"""The shard format `t2v-shards/1` (docs/FORMATS.md), the one place it is written down in code: the typed `Manifest`,
one sample encoding (`encode_sample` / `decode_sample`), one tar reader (`iter_tar`) and one tar writer
(`ShardWriter`). The prepare stage produces it, the embed stage adds caption embeddings, the trainer reads it.
Torch-free.

    manifest = Manifest.read("data/quickstart/embedded")        # validated; DataError naming the file
    for ref in manifest.shards("train"):
        for key, members in read_shard(ref):                    # raw member bytes, count checked
            sample = decode_sample(key, members, manifest, ref.path)   # arrays checked against the manifest
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from t2v_model.config import DataGeometry, TextEncoderInfo
from t2v_model.errors import ConfigError, DataError
from t2v_model.files import AtomicFile, json_bytes, load_json, named, write_bytes_atomic
from t2v_model.schema import build, to_dict
from t2v_model.text_encoder_id import encoder_id as portable_encoder_id

FORMAT = "t2v-shards/1"
MANIFEST = "manifest.json"
REJECTS = "rejects.jsonl"
SPLITS = ("train", "val", "test")  # training reads train only; test is for evaluation, never trained on
STAGES = ("prepare", "embed")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SHARD_RE = re.compile(r"^(train|val|test)-\d{6}\.tar$")

# sample members: what each stage writes (docs/FORMATS.md)
VIDEO, META, MP4 = "video.npy", "meta.json", "video.mp4"
TEXT, TOKENS, MASK = "text.npy", "tokens.npy", "mask.npy"
EMBEDDED = (TEXT, TOKENS, MASK)
GEOMETRY_KEYS = ("frames", "height", "width", "channels", "fps")


class SampleError(DataError):
    """One malformed sample. The embed stage reports it in rejects.jsonl and goes on; the trainer stops. `reason`:
    what is wrong, without the shard and key."""

    reason = ""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


# manifest ---------------------------------------------------------------------------------------------------------


@dataclass
class ShardEntry:
    name: str
    count: int
    sha256: str = ""  # of the shard file; lets the embed stage notice a raw shard rewritten to the same size


@dataclass
class Split:
    count: int = 0
    shards: list[ShardEntry] = field(default_factory=list)


@dataclass
class ShardRef:
    """One shard as a reader needs it: where it is, what split it belongs to, how many samples it must hold."""

    split: str
    path: Path
    count: int
    sha256: str = ""

    @property
    def name(self) -> str:
        return self.path.name


@dataclass
class Manifest:
    """`manifest.json` of a shard directory: written last, so a directory with one is complete."""

    stage: Literal["prepare", "embed"]
    source: str
    geometry: DataGeometry
    config_hash: str
    splits: dict[str, Split]
    rejects: int = 0  # inputs this stage rejected (rejects.jsonl)
    created: str = ""
    text_encoder: TextEncoderInfo | None = None  # the embed stage's: how every text.npy was made
    embed: dict[str, Any] | None = None  # the embed stage's notes: in_dir, prepare_rejects, truncated_captions
    format: str = FORMAT
    directory: Path | None = field(default=None, init=False, compare=False, repr=False)  # where it was read from

    def validate(self) -> None:
        if self.format != FORMAT:
            raise ConfigError(f"format: must be {FORMAT!r}, got {self.format!r}")
        self.geometry.validate()
        unknown = sorted(set(self.splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"splits.{unknown[0]}: unknown split (known: {', '.join(SPLITS)})")
        for name, split in self.splits.items():
            for s in split.shards:
                if not SHARD_RE.match(s.name) or not s.name.startswith(f"{name}-"):
                    raise ConfigError(f"splits.{name}.shards: {s.name!r} is not a {name}-NNNNNN.tar name")
                if s.count < 0:
                    raise ConfigError(f"splits.{name}.shards: {s.name} has a negative count")
            if sum(s.count for s in split.shards) != split.count:
                raise ConfigError(f"splits.{name}.count: {split.count} is not the sum of its shard counts")
        if self.stage == "embed" and self.text_encoder is None:
            raise ConfigError("text_encoder: the embed stage's manifest must say which encoder made text.npy")

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """The validated manifest of a shard directory whose listed shards all exist; DataError naming the file."""
        directory = Path(directory)
        path = directory / MANIFEST
        data = load_json(path, DataError, "no manifest (run pipelines/prepare.py first, or it did not finish)")
        try:
            geometry = data.get("geometry") if isinstance(data, dict) else None
            missing = [k for k in GEOMETRY_KEYS if k not in geometry] if isinstance(geometry, dict) else []
            if missing:  # a default would describe other videos than the shards hold
                raise ConfigError(f"geometry.{missing[0]}: missing (needs {', '.join(GEOMETRY_KEYS)})")
            manifest = build(cls, data)
        except ConfigError as e:
            raise DataError(f"{path}: {e}") from None
        manifest.directory = directory
        for ref in manifest.shards():
            if not ref.path.is_file():
                raise DataError(f"{ref.path}: shard listed in the manifest is missing")
        return manifest

    def write(self, directory: str | Path) -> None:
        """Write `manifest.json` atomically, stamped with the time (the last file a stage writes)."""
        self.created = datetime.now(UTC).isoformat(timespec="seconds")
        write_bytes_atomic(Path(directory) / MANIFEST, self.to_bytes())

    def to_bytes(self) -> bytes:
        data = to_dict(self)
        del data["directory"]
        return json_bytes({k: v for k, v in data.items() if v is not None})

    @property
    def path(self) -> Path:
        return (self.directory or Path(".")) / MANIFEST

    def count(self, split: str) -> int:
        return self.splits[split].count if split in self.splits else 0

    def shards(self, split: str | None = None) -> list[ShardRef]:
        """The shards of `split` (every split when None), in manifest order; [] for a split that has none."""
        if split is not None and split not in SPLITS:
            raise DataError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        directory = self.directory or Path(".")
        return [ShardRef(name, directory / s.name, s.count, s.sha256) for name, info in self.splits.items()
                if split in (None, name) for s in info.shards]

    # the checks a consumer makes before using the shards: each returns a one-line reason, or None when they fit
    def encoder_mismatch(self, encoder_id: str, dim: int, max_length: int | None = None,
                         token_layer: int | None = None) -> str | None:
        """Why these shards cannot train a model conditioned on `encoder_id` embeddings of width `dim` (cut at
        `max_length` tokens, when given). `encoder_id` is what the config names (embed.encoder): a local directory
        there is compared by its portable id, as the embed stage recorded it (t2v_model.text_encoder_id)."""
        te = self.text_encoder
        if te is None:
            return (f"{self.path}: no text_encoder block (stage {self.stage!r}); these are not pre-embedded shards, "
                    f"run pipelines/embed.py first")
        portable = portable_encoder_id(encoder_id)
        if te.id == portable and te.dim != dim:  # re-embedding with it would give the same width
            return (f"{self.path}: shards were embedded with text encoder {te.id!r} ({te.dim}-d) but the model "
                    f"expects {dim}-d; set model.unet.cond_dim={te.dim}, or embed with a {dim}-d encoder")
        if te.id != portable:
            named = repr(encoder_id) if portable == encoder_id else f"{encoder_id!r} (text encoder {portable!r})"
            return (f"{self.path}: shards were embedded with text encoder {te.id!r} ({te.dim}-d) but the config "
                    f"names {named} (embed.encoder) with model.unet.cond_dim {dim}; re-run the embed stage, "
                    f"or set embed.encoder to {te.id!r}")
        if max_length is not None and te.max_length != max_length:
            return (f"{self.path}: captions were embedded cut at {te.max_length} tokens but embed.max_length is "
                    f"{max_length}; re-run the embed stage, or set embed.max_length to {te.max_length}")
        if token_layer is not None and te.tokens and te.token_layer != token_layer:
            return (f"{self.path}: caption tokens were taken from encoder layer {te.token_layer} but "
                    f"embed.token_layer is {token_layer}; re-run the embed stage, or set embed.token_layer to "
                    f"{te.token_layer}")
        return None

    def card_mismatch(self, geometry: DataGeometry, encoder: TextEncoderInfo, needs_tokens: bool) -> str | None:
        """Why a checkpoint trained on `geometry` videos with `encoder` captions cannot be scored on these shards."""
        keys = ("frames", "height", "width", "channels")
        if any(getattr(self.geometry, k) != getattr(geometry, k) for k in keys):
            got = "x".join(str(getattr(self.geometry, k)) for k in keys)
            want = "x".join(str(getattr(geometry, k)) for k in keys)
            return (f"the shards in {self.directory} are {got} (frames x height x width x channels), the checkpoint "
                    f"was trained on {want}")
        te = self.text_encoder
        if te is None:
            return f"the shards in {self.directory} hold no caption embeddings (not the embed stage's output)"
        if (te.id, te.dim) != (encoder.id, encoder.dim) or (
                te.weights_hash and encoder.weights_hash and te.weights_hash != encoder.weights_hash):
            return (f"the captions in {self.directory} were embedded by {te.id} ({te.dim}-d, weights "
                    f"{te.weights_hash}), the checkpoint's by {encoder.id} ({encoder.dim}-d, weights "
                    f"{encoder.weights_hash})")
        if needs_tokens and not te.tokens:
            return f"the shards in {self.directory} have no per-token embeddings, which cross-attention needs"
        if needs_tokens and te.token_layer != encoder.token_layer:
            return (f"the caption tokens in {self.directory} come from encoder layer {te.token_layer}, the "
                    f"checkpoint's from layer {encoder.token_layer}")
        return None


def read_stage(directory: str | Path, stage: str, advice: str) -> Manifest:
    """`Manifest.read`, refusing another stage's output (`advice` says what to run instead)."""
    manifest = Manifest.read(directory)
    if manifest.stage != stage:
        raise DataError(f"{manifest.path}: holds the {manifest.stage} stage's output, not the {stage} stage's; "
                        f"{advice}")
    return manifest


def rejects_bytes(rejects: Iterable[dict[str, str]]) -> bytes:
    """`rejects.jsonl`: one {"source_id", "path", "reason"} object per line, sorted by source id."""
    rows = sorted(rejects, key=lambda r: (r.get("source_id", ""), r.get("path", "")))
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()


# samples ----------------------------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def encode_sample(video: np.ndarray, meta: dict[str, Any], mp4: bytes | None = None) -> dict[str, bytes]:
    """The members of one raw sample: video.npy (uint8 (T, H, W, C)), meta.json[, video.mp4]."""
    members = {VIDEO: npy_bytes(np.asarray(video, dtype=np.uint8)), META: meta_bytes(meta)}
    if mp4 is not None:
        members[MP4] = mp4
    return members


def embedded_members(members: dict[str, bytes], text: np.ndarray, tokens: np.ndarray | None = None,
                     mask: np.ndarray | None = None) -> dict[str, bytes]:
    """A raw sample's members (passed through byte for byte) plus its caption embeddings: text.npy float16 (N, D),
    and with per-token embeddings tokens.npy float16 (N, L, D) and mask.npy uint8 (N, L)."""
    out = {k: v for k, v in members.items() if k not in EMBEDDED}
    out[TEXT] = npy_bytes(text.astype(np.float16))
    if tokens is not None:
        out[TOKENS] = npy_bytes(tokens.astype(np.float16))
        out[MASK] = npy_bytes(mask.astype(np.uint8))
    return out


@dataclass
class Sample:
    key: str
    video: np.ndarray  # uint8 (T, H, W, C), the manifest's geometry
    meta: dict[str, Any]  # captions (>= 1), source, source_id, attributes
    text: np.ndarray | None = None  # float16 (N, D), row i <-> captions[i] (embedded shards)
    # with per-token embeddings: float16 (N, L, D) zero padded to the sample's longest caption (L <= max_length)
    tokens: np.ndarray | None = None
    mask: np.ndarray | None = None  # uint8 (N, L), 1 = a real token

    @property
    def captions(self) -> list[str]:
        return self.meta["captions"]


def parse_meta(data: bytes | None) -> dict[str, Any]:
    """meta.json of a sample, with at least one non-empty caption; SampleError saying what is wrong."""
    if data is None:
        raise SampleError("missing meta.json")
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SampleError(f"meta.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise SampleError(f"meta.json must be an object, got {type(meta).__name__}")
    captions = meta.get("captions")
    if not isinstance(captions, list) or not captions:
        raise SampleError("meta.json captions must be a non-empty list")
    for i, c in enumerate(captions):
        if not isinstance(c, str) or not c.strip():
            raise SampleError(f"meta.json captions[{i}] must be a non-empty string, got {c!r}")
    return meta


def decode_sample(key: str, members: dict[str, bytes], manifest: Manifest, where: str | Path = "") -> Sample:
    """One sample, every member checked against the manifest: the video is uint8 of its geometry; in embedded shards
    text.npy (and tokens.npy / mask.npy when the manifest has per-token embeddings) has one row per caption, the
    encoder's width, at most its max_length tokens, float16 and finite. A malformed member is a SampleError naming
    `where`, the key and the member (npy members are loaded without pickle: a hostile one is refused, never run)."""
    prefix = f"{where}: sample {key}" if where else f"sample {key}"
    try:
        meta = parse_meta(members.get(META))
        g = manifest.geometry
        video = _array(members, VIDEO, np.uint8, (g.frames, g.height, g.width, g.channels))
        sample = Sample(key, video, meta)
        te = manifest.text_encoder
        if manifest.stage == "embed" and te is not None:
            n = len(meta["captions"])
            sample.text = _array(members, TEXT, np.float16, (n, te.dim), finite=True)
            if te.tokens:
                sample.tokens = _array(members, TOKENS, np.float16, (n, None, te.dim), finite=True)
                length = sample.tokens.shape[1]
                if not 1 <= length <= te.max_length:
                    raise SampleError(f"tokens.npy holds {length} tokens per caption, the manifest says 1 to "
                                      f"{te.max_length}")
                sample.mask = _array(members, MASK, np.uint8, (n, length))
    except SampleError as e:
        error = SampleError(f"{prefix}: {e}")
        error.reason = str(e)
        raise error from None
    return sample


def _array(members: dict[str, bytes], name: str, dtype, shape: tuple[int | None, ...],
           finite: bool = False) -> np.ndarray:
    """The member as an array of this dtype and shape (None: any size along that axis)."""
    data = members.get(name)
    if data is None:
        raise SampleError(f"missing {name}")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, EOFError, OSError... for a bad .npy
        raise SampleError(f"{name} is not a valid .npy array ({type(e).__name__})") from None
    fits = (isinstance(array, np.ndarray) and array.dtype == dtype and array.ndim == len(shape)
            and all(want is None or got == want for got, want in zip(array.shape, shape)))
    if not fits:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
        want = "(" + ", ".join("L" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
        raise SampleError(f"{name} is {got}, the manifest says {np.dtype(dtype)} {want}")
    if finite and not np.isfinite(array).all():
        raise SampleError(f"{name} holds NaN or infinite values")
    return array


# tar shards -------------------------------------------------------------------------------------------------------


def split_key(member_name: str) -> tuple[str, str]:
    """WebDataset's convention: 'dir/abc.video.npy' -> ('dir/abc', 'video.npy')."""
    head, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_tar(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {member: bytes}) per sample of a tar shard, members in stored order; DataError naming an unreadable
    file."""
    path = Path(path)
    key, members = None, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                k, ext = split_key(info.name)
                if members and k != key:
                    yield key, members
                    members = {}
                key = k
                members[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else (str(e).strip().splitlines() or [
            type(e).__name__])[0].rstrip(":")
        raise DataError(f"{path}: unreadable tar shard ({reason})") from None
    if members:
        yield key, members


def read_shard(ref: ShardRef) -> Iterator[tuple[str, dict[str, bytes]]]:
    """`iter_tar` of a manifest's shard, checked against the count the manifest lists (a tar cut off between two
    samples still reads cleanly, as a shorter shard)."""
    count = 0
    for sample in iter_tar(ref.path):
        count += 1
        yield sample
    if count != ref.count:
        raise DataError(f"{ref.path}: {count} samples but the manifest lists {ref.count} (truncated or replaced "
                        f"shard? re-run the stage that wrote it)")


def iter_samples(manifest: Manifest, split: str) -> Iterator[Sample]:
    """The decoded, checked samples of one split in a stable order (manifest shard order, then stored order)."""
    for ref in manifest.shards(split):
        for key, members in read_shard(ref):
            yield decode_sample(key, members, manifest, ref.path)


def tar_bytes(member_sizes: Iterable[int]) -> int:
    """Bytes a tar needs for members of these sizes (512-byte header + data padded to 512)."""
    return sum(512 + -(-n // 512) * 512 for n in member_sizes)


class _HashingWriter:
    """The file object tarfile writes to: hashes the bytes on their way to the file."""

    def __init__(self, file: IO[bytes], digest):
        self.file, self.digest = file, digest

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


class ShardWriter:
    """Writes one tar shard with reproducible bytes (fixed mtime/owner/mode, members in the order written), hashed
    while writing. The shard exists under its name only once complete (`t2v_model.files.AtomicFile`); leaving the
    `with` block on an exception removes the temp file. `max_samples` / `max_bytes` are limits: `fits(nbytes)` says
    whether one more sample of `nbytes` is within them (`write` refuses one that is not, unless the shard is
    empty)."""

    def __init__(self, path: str | Path, max_samples: int | None = None, max_bytes: int | None = None):
        self.path = Path(path)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.count = 0
        self.bytes = 1024  # the end-of-archive blocks
        self._out = AtomicFile(self.path)
        self._hash = hashlib.sha256()
        self._tar = tarfile.open(fileobj=_HashingWriter(self._out.file, self._hash), mode="w",
                                 format=tarfile.USTAR_FORMAT)

    @property
    def sha256(self) -> str:
        """Hex digest of the bytes written so far (of the whole file once closed)."""
        return self._hash.hexdigest()

    def fits(self, nbytes: int) -> bool:
        if self.max_samples is not None and self.count >= self.max_samples:
            return False
        return self.max_bytes is None or self.bytes + nbytes <= self.max_bytes

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if not KEY_RE.match(key):
            raise ValueError(f"sample key {key!r} must match {KEY_RE.pattern} (no dots)")
        nbytes = tar_bytes(len(v) for v in members.values())
        if self.count and not self.fits(nbytes):
            raise ValueError(f"{self.path.name}: sample {key} exceeds the shard limits")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uname = info.gname = ""
            try:
                self._tar.addfile(info, io.BytesIO(data))
            except OSError as e:  # a full disk: the report names the shard
                raise named(e, self.path)
        self.count += 1
        self.bytes += nbytes

    def close(self) -> Path:
        try:
            self._tar.close()
        except BaseException as e:
            self._out.discard()
            raise named(e, self.path)
        return self._out.commit()

    def abort(self) -> None:
        try:
            self._tar.close()
        except OSError:  # its end blocks did not fit either: the shard is thrown away
            pass
        finally:
            self._out.discard()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        (self.close if exc_type is None else self.abort)()
