"""The experiment file: one YAML per experiment (`configs/<name>.yaml`), a section per stage, and where each stage
reads and writes by default. The one place that knows the whole layout; each stage builds its own section.

    raw = load_yaml("configs/quickstart.yaml", overrides=["train.lr=3e-4"])
    Paths(raw).run              # runs/quickstart, unless train.out_dir says otherwise

    data/<name>/raw        prepare writes (data.out_dir)       embed reads (embed.in_dir)
    data/<name>/embedded   embed writes (embed.out_dir)        train and evaluate read (train.data_dir)
    runs/<name>            train writes (train.out_dir)        generate and evaluate read (runs/<name>/model)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from t2v_model.errors import ConfigError

SECTIONS = ("name", "seed", "data", "embed", "model", "train", "evaluate")


def load_yaml(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Read an experiment YAML (or start empty when `path` is None) and apply `key.sub=value` overrides; a misspelt
    top-level section is refused (it would be read by no stage and silently ignored)."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    for item in overrides:
        apply_override(raw, item)
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown top-level section (known: {', '.join(SECTIONS)})")
    for key in ("data", "embed", "model", "train", "evaluate"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(raw[key]).__name__}")
    return raw


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (so 3e-4, true, [1,2] work)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=3e-4")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    # YAML 1.1 reads "3e-4" as a string; accept it as the float a user meant
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            pass
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


def name_of(raw: dict[str, Any]) -> str:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError("name: required, a non-empty string (outputs go under data/<name>/ and runs/<name>/)")
    return name


def seed_of(raw: dict[str, Any]) -> int:
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: expected an integer, got {seed!r}")
    return seed


def section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    return dict(raw.get(key) or {})


class Paths:
    """Where the stages of one experiment meet: each an explicit config key, or its default under the name (needed
    only where a default is used)."""

    def __init__(self, raw: dict[str, Any]):
        self._raw = raw

    @property
    def prepared(self) -> Path:
        """data.out_dir: the prepare stage's raw shards."""
        return self._get("data.out_dir", "data/{name}/raw")

    @property
    def embed_in(self) -> Path:
        """embed.in_dir: what the embed stage reads, the raw shards."""
        return self._get("embed.in_dir", lambda: self.prepared)

    @property
    def embedded(self) -> Path:
        """embed.out_dir: the embed stage's pre-embedded shards."""
        return self._get("embed.out_dir", "data/{name}/embedded")

    @property
    def train_data(self) -> Path:
        """train.data_dir: what train and evaluate read, the pre-embedded shards."""
        return self._get("train.data_dir", lambda: self.embedded)

    @property
    def run(self) -> Path:
        """train.out_dir: checkpoints, the exported model (run/model), samples, metrics, evaluation."""
        return self._get("train.out_dir", "runs/{name}")

    def _get(self, key: str, default) -> Path:
        sec, _, sub = key.partition(".")
        value = section(self._raw, sec).get(sub)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path (a string), got {value!r}")
        if value:
            return Path(value)
        if callable(default):
            return default()
        name = self._raw.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{key}: not set, and there is no name to put it under {default}")
        return Path(default.format(name=name))
