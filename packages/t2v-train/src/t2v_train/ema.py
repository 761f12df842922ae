"""Exponential moving average of the model weights (the weights that get exported and sampled from)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`ema.update(model, step)`: before `start` the average is a copy of the weights; from then on, every `every`
    steps, shadow = decay * shadow + (1 - decay) * weights. Buffers are always copied.

    The tensors of both models are listed once and updated with one foreach call each: walking the module tree and
    lerping tensor by tensor from Python every step took ~5-9 ms of the quickstart's ~400 ms step. Loading weights
    into either model (load_state_dict copies in place) keeps the lists valid."""

    def __init__(self, model: nn.Module, decay: float, start: int = 0, every: int = 1):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.start, self.every = decay, start, every
        self._shadow = (list(self.model.parameters()), list(self.model.buffers()))
        self._source: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        if step % self.every:
            return
        if self._source is None or self._source[0] is not model:
            self._source = (model, [p.detach() for p in model.parameters()], list(model.buffers()))
        _, params, buffers = self._source
        decay = 0.0 if step < self.start else self.decay
        torch._foreach_lerp_(self._shadow[0], params, 1.0 - decay)
        if buffers:
            torch._foreach_copy_(self._shadow[1], buffers)
