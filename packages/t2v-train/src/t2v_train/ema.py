"""Exponential moving average of the model weights (the weights that get exported and sampled from)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`ema.update(model, step)`: before `start` the average is a copy of the weights; from then on, every `every`
    steps, shadow = decay * shadow + (1 - decay) * weights. Buffers are always copied."""

    def __init__(self, model: nn.Module, decay: float, start: int = 0, every: int = 1):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.start, self.every = decay, start, every

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if step % self.every:
            return
        decay = 0.0 if step < self.start else self.decay
        for shadow, p in zip(self.model.parameters(), model.parameters()):
            shadow.lerp_(p.detach(), 1.0 - decay)
        for shadow, b in zip(self.model.buffers(), model.buffers()):
            shadow.copy_(b)
