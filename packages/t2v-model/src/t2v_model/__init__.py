"""t2v_model: the Unet3D, Gaussian diffusion, samplers, checkpoint format and inference API of t2v."""

from .config import DataGeometry, DiffusionConfig, ModelCard, ModelConfigError, TextEncoderInfo, UnetConfig
from .unet import Unet3D

__all__ = [
    "DataGeometry",
    "DiffusionConfig",
    "ModelCard",
    "ModelConfigError",
    "TextEncoderInfo",
    "Unet3D",
    "UnetConfig",
]
