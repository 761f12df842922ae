"""Attention layers of the Unet3D.

Inside the network a video is kept as frames folded into the batch, `(B*T, C, H, W)`, so every spatial op is a
plain 2D op; temporal attention regroups the same tensor frame-major, as `(T, B*H*W, C)`.
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
        """T5's bidirectional bucketing: half the buckets for each direction; distances below a quarter of
        `num_buckets` get a bucket each, larger ones share log-spaced buckets up to `max_distance`, and any
        farther one falls in the last."""
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


def rotate_rows(weight: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """Fold the rotary embedding into a projection: `weight` (..., d, in) holds the rows of heads of size d; returns
    (T, ..., d, in) with the first `2*cis.shape[-2]` rows of every head rotated by frame t's angles, so that
    `x @ rotate_rows(W, cis)[t].T` is `x @ W.T` with its channel pairs (a, b) rotated to
    (a cos - b sin, a sin + b cos): rotation is linear and commutes with the projection (the tests check this against
    rotary-embedding-torch). The weight is tiny, the activations are not: this replaces four full-size elementwise
    passes over q and k (and their backward) by one per-frame batched matmul."""
    rot = cis.shape[-2] * 2
    w_rot, w_pass = weight.split([rot, weight.shape[-2] - rot], dim=-2)
    a, b = w_rot.unflatten(-2, (-1, 2)).unbind(-2)  # (..., rot/2, in): even / odd rows
    shape = (cis.shape[0],) + (1,) * (weight.dim() - 2) + (cis.shape[-2], 1)
    cos, sin = (z.reshape(shape) for z in cis.unbind(-1))
    w_rot = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-2).flatten(-3, -2)
    return torch.cat((w_rot, w_pass.expand(cis.shape[0], *w_pass.shape)), dim=-2)


def frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v over the frame axis; q, k, v: (T, N, heads, d) frame-major, bias:
    (heads, T, T). Returns (T, N, heads, d).

    Eagerly through SDPA. Under torch.compile on CPU as a broadcast multiply-and-sum instead: the sequences are
    a few frames long and there are B*H*W*heads of them, so SDPA's batched matmuls are thousands of tiny GEMMs,
    whereas inductor fuses this form (scores, softmax, weighted sum, and their backward) into a few loops over the
    activations (quickstart model: 566 ms per train step compiled vs 653 eager; 960 compiled through SDPA)."""
    if torch.compiler.is_compiling() and q.device.type == "cpu":
        s = (q[:, None] * k[None]).sum(-1) * q.shape[-1] ** -0.5 + bias.permute(1, 2, 0)[:, :, None]  # (Ti, Tj, N, h)
        return (s.softmax(dim=1)[..., None] * v[None]).sum(1)
    q, k, v = (z.permute(1, 2, 0, 3) for z in (q, k, v))  # (N, heads, T, d) views
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[None]).permute(2, 0, 1, 3)


class TemporalAttention(nn.Module):
    """Self-attention across the frames of every pixel: rotary embeddings on q/k and a learned relative position
    bias added to the logits, softmax(q k^T / sqrt(d) + bias) v (`frame_attention`).

    Frame-major layout `(T, B*H*W, C)`: q and k are batched matmuls over frames with the rotary rotation folded into
    each frame's weights (`rotate_rows`); v is a plain matmul."""

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
        n, inner = b * h * w, self.heads * self.dim_head
        # (B*T, C, H, W) -> (T, B*H*W, C): one sequence of T frames per pixel, frame-major
        seq = x.reshape(b, t, c, h, w).permute(1, 0, 3, 4, 2).reshape(t, n, c)
        w_qk, w_v = self.to_qkv.weight.split([2 * inner, inner])
        w_qk = rotate_rows(w_qk.unflatten(0, (2, self.heads, self.dim_head)), cis).flatten(1, 3)  # (T, 2*inner, C)
        y = self.norm(seq)
        # three products, not one 3*inner-wide one split with unbind: unbind's backward stacks dq, dk, dv into a new
        # (T, N, 3*inner) tensor (31 MB per full-resolution layer at the seed config), ~7% of the train step
        w_q, w_k = w_qk.to(seq.dtype).chunk(2, dim=1)  # (T, inner, C) each
        q, k = (torch.bmm(y, w.transpose(1, 2)).unflatten(-1, (self.heads, self.dim_head)) for w in (w_q, w_k))
        v = torch.matmul(y, w_v.to(seq.dtype).t()).unflatten(-1, (self.heads, self.dim_head))  # (T, N, heads, d)
        out = self.to_out(frame_attention(q, k, v, pos_bias.to(q.dtype)).reshape(t, n, inner))  # (T, N, C)
        # back to (B*T, C, H, W), laid out channels-last like the rest of the network
        out = out.reshape(t, b, h, w, c).transpose(0, 1).reshape(bt, h, w, c).permute(0, 3, 1, 2)
        return x + out


class SpatialLinearAttention(nn.Module):
    """Linear attention over the pixels of each frame (Shen et al.; the seed's `SpatialLinearAttention`).

    softmax over channels for q, over pixels for k; context = k v^T per head, out = context^T q. The projection is
    computed transposed, W_q @ x^T -> (N, heads*d, P) (likewise k, v): every head's q, k and v are then contiguous
    (d, P) blocks whose (N, heads) batch dims merge into one stride, so the two matmuls and the softmax over pixels run
    without a single copy or transpose of the activations."""

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
        heads, dh = self.heads, self.dim_head
        seq = self.norm(x.permute(0, 2, 3, 1).reshape(n, h * w, c))  # (N, P, C): a view of channels-last x
        seq_t = seq.transpose(1, 2)
        # W @ x^T: bmm writes (N, hidden, P) directly (matmul would transpose an (N*P, hidden) product into it); one
        # product per q, k, v so that backward needs no stack of their gradients (see TemporalAttention)
        q, k, v = (torch.bmm(w.to(seq.dtype).expand(n, -1, -1), seq_t).unflatten(1, (heads, dh))
                   for w in self.to_qkv.weight.chunk(3))  # (N, heads, d, P) each
        q = q.softmax(dim=-2)
        k = k.softmax(dim=-1)
        context = torch.matmul(k, v.transpose(-1, -2)) * self.scale  # (N, heads, d, e)
        out = torch.matmul(context.transpose(-1, -2), q).reshape(n, heads * dh, h * w)  # (N, heads*e, P)
        out = torch.baddbmm(self.to_out.bias.to(out.dtype), out.transpose(1, 2),
                            self.to_out.weight.t().to(out.dtype).expand(n, -1, -1))  # (N, P, C), no transposing copy
        return x + out.reshape(n, h, w, c).permute(0, 3, 1, 2)


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
