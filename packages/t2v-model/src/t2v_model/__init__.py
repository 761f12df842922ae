"""t2v_model: the Unet3D, Gaussian diffusion, samplers, checkpoint format and inference API of t2v.

Also the torch-free foundations every stage shares: `errors` (the error hierarchy), `schema` (typed configs),
`files` (atomic writes) and `cli` (how a pipeline ends). Importing those, or this package, does not load torch: the
names below are imported on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataGeometry": "config",
    "DiffusionConfig": "config",
    "ModelCard": "config",
    "TextEncoderInfo": "config",
    "UnetConfig": "config",
    "ConfigError": "errors",
    "Unet3D": "unet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 't2v_model' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
