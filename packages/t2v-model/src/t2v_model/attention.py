"""Attention layers of the Unet3D.

Inside the network a video is kept as frames folded into the batch, `(B*T, C, H, W)`, so every spatial op is a
plain 2D op; temporal attention regroups the same tensor as `(B*H*W, T, C)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative position bias for temporal attention: returns `(heads, T, T)`."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    @staticmethod
    def bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
        n = -relative_position
        half = num_buckets // 2
        ret = (n < 0).long() * half
        n = n.abs()
        max_exact = half // 2
        is_small = n < max_exact
        large = max_exact + (
            torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
        ).long()
        large = large.clamp(max=half - 1)
        return ret + torch.where(is_small, n, large)

    def forward(self, n: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(n, device=device)
        rel = pos[None, :] - pos[:, None]
        buckets = self.bucket(rel, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)


def rotary_cis(frames: int, rot_dim: int, device: torch.device, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al.) as `(T, rot_dim/2, 2)` = (cos, sin) of position * theta^(-2i/d).

    Same convention as rotary-embedding-torch (adjacent channel pairs rotated). Kept real-valued (not complex) so
    torch.compile/inductor can fuse it into the surrounding ops."""
    freqs = theta ** (-torch.arange(0, rot_dim, 2, device=device, dtype=torch.float32) / rot_dim)
    angles = torch.arange(frames, device=device, dtype=torch.float32)[:, None] * freqs[None, :]
    return torch.stack((angles.cos(), angles.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Rotate the first `2*cis.shape[-2]` channels of `x` by the per-frame angles in `cis` (broadcast against x's
    leading dims, e.g. x (N, T, ..., d) with cis (T, 1, ..., rot/2, 2)): (a, b) -> (a cos - b sin, a sin + b cos)."""
    rot = cis.shape[-2] * 2
    # split (not slicing) so the backward concatenates instead of zero-filling full-size gradients
    x_rot, x_pass = x.split([rot, x.shape[-1] - rot], dim=-1)
    a, b = x_rot.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cis.unbind(-1)
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)
    return out if x_pass.shape[-1] == 0 else torch.cat((out, x_pass), dim=-1)


class TemporalAttention(nn.Module):
    """Self-attention across the frames of every pixel: rotary embeddings on q/k and a learned relative position
    bias added to the logits, softmax(q k^T / sqrt(d) + bias) v, through SDPA (the bias is the attention mask)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor, frames: int, pos_bias: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
        bt, c, h, w = x.shape
        b, t = bt // frames, frames
        n = b * h * w
        # (B*T, C, H, W) -> (B*H*W, T, C): one sequence of T frames per pixel
        seq = x.reshape(b, t, c, h, w).permute(0, 3, 4, 1, 2).reshape(n, t, c)
        qk, v = self.to_qkv(self.norm(seq)).split([2 * self.heads * self.dim_head, self.heads * self.dim_head], -1)
        qk = apply_rotary(qk.unflatten(-1, (2, self.heads, self.dim_head)), cis[:, None, None])  # q, k in one op
        q, k = (z.transpose(1, 2) for z in qk.unbind(2))  # (N, heads, T, d)
        v = v.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=pos_bias.to(q.dtype)[None])
        out = self.to_out(out.transpose(1, 2).reshape(n, t, -1))  # (N, T, C)
        # back to (B*T, C, H, W), laid out channels-last like the rest of the network
        out = out.reshape(b, h, w, t, c).permute(0, 3, 1, 2, 4).reshape(bt, h, w, c).permute(0, 3, 1, 2)
        return x + out


class SpatialLinearAttention(nn.Module):
    """Linear attention over the pixels of each frame (Shen et al.; the seed's `SpatialLinearAttention`).

    softmax over channels for q, over pixels for k; context = k^T v per head, out = q context. Works on the
    channels-last view (N, H*W, C) so the norm and projections need no transposes."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        hidden = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, hidden * 3, bias=False)
        self.to_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        q, k, v = self.to_qkv(self.norm(seq)).unflatten(-1, (3, self.heads, self.dim_head)).unbind(2)  # (N, P, h, d)
        q = q.softmax(dim=-1) * self.scale
        k = k.softmax(dim=1)
        context = torch.einsum("nphd,nphe->nhde", k, v)
        out = torch.einsum("nhde,nphd->nphe", context, q).reshape(n, h * w, -1)
        out = self.to_out(out).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return x + out


class SpatialAttention(nn.Module):
    """Full softmax attention over the pixels of each frame (used in the middle of the U-Net)."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        seq = self.norm(x.permute(0, 2, 3, 1).reshape(n, h * w, c))
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for t in self.to_qkv(seq).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v)
        out = self.to_out(out.transpose(1, 2).flatten(2))
        return x + out.reshape(n, h, w, c).permute(0, 3, 1, 2)


class CrossAttention(nn.Module):
    """Attention from every pixel of every frame to the caption's token embeddings.

    All frames of a video share one caption, so the frames are put in the query sequence instead of repeating the
    keys/values per frame: `(B, heads, T*H*W, d)` queries against `(B, heads, L, d)` keys — the same result, less memory.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        hidden = heads * dim_head
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, hidden, bias=False)
        self.to_kv = nn.Linear(context_dim, hidden * 2, bias=False)
        self.to_out = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor, frames: int, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        bt, c, h, w = x.shape
        b = bt // frames
        seq = self.norm(x.permute(0, 2, 3, 1).reshape(b, frames * h * w, c))
        q = self.to_q(seq).unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
        k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2) for t in self.to_kv(context).chunk(2, -1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = self.to_out(out.transpose(1, 2).flatten(2))
        return x + out.reshape(bt, h, w, c).permute(0, 3, 1, 2)
