import shutil

import pytest
import torch
import torch.nn.functional as F

from t2v_model import ConfigError, Unet3D, UnetConfig
from t2v_model.attention import (
    CrossAttention,
    RelativePositionBias,
    SpatialAttention,
    SpatialLinearAttention,
    TemporalAttention,
    rotary_cis,
    rotate_rows,
)


def apply_rotary(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """The textbook, activation-side rotary: rotate the first `2*cis.shape[-2]` channels of x pairwise,
    (a, b) -> (a cos - b sin, a sin + b cos), with cis (T, ..., rot/2, 2) broadcast against x's leading dims.
    The model folds the same rotation into its weights (`rotate_rows`); this is the reference both are checked with."""
    rot = cis.shape[-2] * 2
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    a, b = x_rot.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cis.unbind(-1)
    return torch.cat((torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2), x_pass), dim=-1)


def tiny(**kw) -> Unet3D:
    torch.manual_seed(0)
    cfg = dict(dim=8, dim_mults=(1, 2, 4), cond_dim=16, attn_heads=2, attn_dim_head=8)
    cfg.update(kw)
    return Unet3D(UnetConfig(**cfg))


@pytest.mark.parametrize("patch_size", [1, 2])
@pytest.mark.parametrize("frames,height,width", [(1, 8, 8), (3, 9, 11), (7, 16, 12), (4, 5, 3)])
def test_output_shape_matches_input_for_odd_frames_and_sizes(frames, height, width, patch_size):
    model = tiny(patch_size=patch_size)
    x = torch.randn(2, 3, frames, height, width)
    out = model(x, torch.tensor([0, 999]), torch.randn(2, 16))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_cross_attention_uses_tokens_and_respects_mask():
    model = tiny(cross_attn=True)
    x, t, text = torch.randn(1, 3, 3, 8, 8), torch.tensor([10]), torch.randn(1, 16)
    tokens = torch.randn(1, 5, 16)
    mask = torch.tensor([[True, True, False, False, False]])
    out = model(x, t, text, tokens=tokens, token_mask=mask)
    # changing masked-out tokens changes nothing; changing a visible token changes the output
    tokens2 = tokens.clone()
    tokens2[:, 3:] += 10
    assert torch.allclose(out, model(x, t, text, tokens=tokens2, token_mask=mask), atol=1e-6)
    tokens2[:, 0] += 10
    assert not torch.allclose(out, model(x, t, text, tokens=tokens2, token_mask=mask), atol=1e-4)
    with pytest.raises(ValueError, match="cross_attn"):
        model(x, t, text)


def test_drop_text_replaces_caption_with_learned_null_embedding():
    model = tiny()
    x, t = torch.randn(2, 3, 2, 8, 8), torch.tensor([5, 5])
    drop = torch.tensor([True, True])
    a = model(x, t, torch.randn(2, 16), drop_text=drop)
    b = model(x, t, torch.randn(2, 16), drop_text=drop)
    assert torch.equal(a, b)
    assert not torch.allclose(a, model(x, t, torch.randn(2, 16)))
    # the null embedding gets a gradient when used (the reference never trained it)
    a.sum().backward()
    assert model.null_text_emb.grad is not None and model.null_text_emb.grad.abs().sum() > 0


def test_text_changes_output_and_frames_interact():
    model = tiny()
    x, t = torch.randn(1, 3, 4, 8, 8), torch.tensor([100])
    text = torch.randn(1, 16)
    out = model(x, t, text)
    assert not torch.allclose(out, model(x, t, text + 1))
    # temporal attention: perturbing frame 0 changes the output at frame 3
    x2 = x.clone()
    x2[:, :, 0] += 1
    assert not torch.allclose(out[:, :, 3], model(x2, t, text)[:, :, 3], atol=1e-5)


def test_attn_from_level_attends_only_below_full_resolution():
    """attn_from_level 1: no attention sees a full-resolution tensor, every other level attends on both paths, and
    frames still interact through the attention left."""
    model = tiny(attn_from_level=1, cross_attn=True, use_sparse_linear_attn=True)
    seen = []
    for m in model.modules():
        if isinstance(m, (TemporalAttention, CrossAttention, SpatialLinearAttention, SpatialAttention)):
            m.register_forward_hook(lambda mod, args, out: seen.append((type(mod).__name__, args[0].shape[-1])))
    x, t, text = torch.randn(1, 3, 4, 16, 16), torch.tensor([100]), torch.randn(1, 16)
    tokens, mask = torch.randn(1, 3, 16), torch.ones(1, 3, dtype=torch.bool)
    out = model(x, t, text, tokens, mask)
    assert out.shape == x.shape
    assert sorted(w for name, w in seen if name == "TemporalAttention") == [4, 4, 4, 8, 8]  # down, middle, up
    assert sorted(w for name, w in seen if name == "CrossAttention") == [4, 4, 4, 8, 8]
    assert sorted(w for name, w in seen if name == "SpatialLinearAttention") == [4, 4, 8, 8]
    x2 = x.clone()
    x2[:, :, 0] += 1
    assert not torch.allclose(out[:, :, 3], model(x2, t, text, tokens, mask)[:, :, 3], atol=1e-5)
    assert model.num_parameters() < tiny(cross_attn=True, use_sparse_linear_attn=True).num_parameters()
    with pytest.raises(ConfigError, match=r"attn_from_level: must be a level index in \[0, 2\], got 3"):
        tiny(attn_from_level=3)


def test_gradient_checkpointing_gives_same_loss_and_grads():
    model = tiny()
    x, t, text = torch.randn(2, 3, 3, 8, 8), torch.tensor([1, 2]), torch.randn(2, 16)
    model(x, t, text).square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, t, text).square().mean().backward()
    for n, p in model.named_parameters():
        if n in ref:
            assert torch.allclose(p.grad, ref[n], atol=1e-6), n


def test_every_gradient_has_its_parameters_strides():
    """DDP's gradient layout contract (else: "grad strides do not match bucket view strides" and a copy per step);
    1x1 kernels get channels-last gradients from channels-last activations, so their weights are laid out alike."""
    model = tiny(dim_mults=(1, 2))  # its ResnetBlocks change width: 1x1 residual convs, plus the final 1x1 conv
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.in_channels > 1
               for m in model.modules())
    x, t, text = torch.randn(2, 3, 3, 8, 8), torch.tensor([1, 2]), torch.randn(2, 16)
    model(x, t, text).square().mean().backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            assert p.grad.stride() == p.stride(), n


def test_rotary_matches_rotary_embedding_torch():
    rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")
    rot = rotary_embedding_torch.RotaryEmbedding(16)
    q = torch.randn(3, 8, 7, 16)  # (N, heads, T, d) as the library expects
    ref = rot.rotate_queries_or_keys(q)
    cis = rotary_cis(7, 16, q.device)
    ours = apply_rotary(q.transpose(1, 2), cis[:, None]).transpose(1, 2)  # ours: (N, T, heads, d)
    assert torch.allclose(ours, ref, atol=1e-5)
    # partial rotation: only the first 16 of 24 channels are rotated
    q24 = torch.randn(2, 5, 3, 24)
    out = apply_rotary(q24, rotary_cis(5, 16, q.device)[:, None])
    assert torch.equal(out[..., 16:], q24[..., 16:])


def reference_temporal_attention(layer: TemporalAttention, x, frames, bias, cis):
    """The textbook computation, written independently of SDPA: LN -> q,k,v -> rotary on q,k ->
    softmax(q k^T / sqrt(d) + bias) v -> out."""
    bt, c, h, w = x.shape
    b = bt // frames
    seq = x.reshape(b, frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, frames, c)
    q, k, v = layer.to_qkv(layer.norm(seq)).unflatten(-1, (3, layer.heads, layer.dim_head)).unbind(2)
    q, k = apply_rotary(q, cis[:, None]), apply_rotary(k, cis[:, None])
    q, k, v = (z.transpose(1, 2) for z in (q, k, v))
    att = torch.softmax(q @ k.transpose(-1, -2) / layer.dim_head**0.5 + bias, dim=-1) @ v
    out = layer.to_out(att.transpose(1, 2).flatten(2))
    return x + out.reshape(b, h, w, frames, c).permute(0, 3, 4, 1, 2).reshape(bt, c, h, w)


@pytest.mark.parametrize("frames,dim_head", [(1, 8), (5, 32), (16, 32), (3, 48)])
def test_temporal_attention_equals_textbook_attention_with_grads(frames, dim_head):
    torch.manual_seed(0)
    layer = TemporalAttention(12, heads=2, dim_head=dim_head)
    rpb = RelativePositionBias(2)
    x = torch.randn(2 * frames, 12, 3, 5, requires_grad=True)
    cis = rotary_cis(frames, min(32, dim_head), x.device)
    ours = layer(x, frames, rpb(frames, x.device), cis)
    ref = reference_temporal_attention(layer, x, frames, rpb(frames, x.device), cis)
    assert torch.allclose(ours, ref, atol=1e-5)
    g = torch.randn_like(ref)
    params = [x, layer.to_qkv.weight, layer.to_out.weight, layer.norm.weight, rpb.relative_attention_bias.weight]
    grads = torch.autograd.grad(ours, params, g)
    grads_ref = torch.autograd.grad(ref, params, g)
    for name, a, b in zip(["x", "to_qkv", "to_out", "norm", "bias"], grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name


def _layer_and_grads(layer_fn, frames=5, dim_head=8, seed=0):
    torch.manual_seed(seed)
    layer = TemporalAttention(12, heads=2, dim_head=dim_head)
    rpb = RelativePositionBias(2)
    torch.nn.init.normal_(rpb.relative_attention_bias.weight)  # a bias that matters
    x = torch.randn(2 * frames, 12, 3, 4, requires_grad=True)
    cis = rotary_cis(frames, dim_head, x.device)
    out = layer_fn(layer)(x, frames, rpb(frames, x.device), cis)
    params = [x, layer.to_qkv.weight, layer.to_out.weight, rpb.relative_attention_bias.weight]
    return out, torch.autograd.grad(out, params, torch.linspace(-1, 1, out.numel()).view_as(out))


def test_compile_form_of_frame_attention_equals_sdpa(monkeypatch):
    """The broadcast form used under torch.compile on CPU, run eagerly, against the SDPA form (values and grads)."""
    ref, ref_grads = _layer_and_grads(lambda layer: layer)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    out, grads = _layer_and_grads(lambda layer: layer)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_compiled_temporal_attention_equals_eager():
    ref, ref_grads = _layer_and_grads(lambda layer: layer, frames=3)
    out, grads = _layer_and_grads(lambda layer: torch.compile(layer, fullgraph=True), frames=3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_relative_position_bias_is_translation_invariant():
    rpb = RelativePositionBias(heads=3, max_distance=32)
    bias = rpb(6, torch.device("cpu"))
    assert bias.shape == (3, 6, 6)
    assert torch.equal(bias[:, 0, 1], bias[:, 3, 4]) and torch.equal(bias[:, 2, 0], bias[:, 5, 3])
    assert not torch.equal(bias[:, 0, 1], bias[:, 1, 0])  # direction matters


@pytest.mark.parametrize("patch_size", [1, 2])
def test_tiny_unet_overfits_one_batch(patch_size):
    # patch_size 2: the target differs pixel by pixel inside every 2x2 patch, which the unfolded output must resolve
    model = tiny(dim_mults=(1, 2), patch_size=patch_size, dim=8 * patch_size)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 8, 8, generator=g)
    t = torch.tensor([50, 700])
    text = torch.randn(2, 16, generator=g)
    target = torch.randn(2, 3, 4, 8, 8, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        loss = F.mse_loss(model(x, t, text), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_config_validation_names_the_key():
    with pytest.raises(ConfigError, match="attn_dim_head: must be even when below 32, got 3"):
        UnetConfig(attn_dim_head=3).validate()
    UnetConfig(attn_dim_head=33).validate()  # rotary uses 32 of its channels
    with pytest.raises(ConfigError, match="resnet_groups"):
        Unet3D(UnetConfig(dim=12, resnet_groups=8))
    with pytest.raises(ConfigError, match="init_kernel_size"):
        Unet3D(UnetConfig(init_kernel_size=4))
    with pytest.raises(ConfigError, match="patch_size"):
        UnetConfig(patch_size=0).validate()
    with pytest.raises(ConfigError, match=r"num_res_blocks: .* one per level \(4\), got \(1, 2\)"):
        UnetConfig(num_res_blocks=(1, 2)).validate()
    with pytest.raises(ConfigError, match="num_res_blocks"):
        UnetConfig(num_res_blocks=0).validate()
    with pytest.raises(ConfigError, match="num_res_blocks: .* got True"):
        UnetConfig(num_res_blocks=True).validate()
    model = tiny()
    with pytest.raises(ValueError, match="text embedding"):
        model(torch.randn(1, 3, 2, 8, 8), torch.tensor([1]), torch.randn(1, 17))


def test_seed_config_parameter_count_matches_reference_architecture():
    # the seed config (dim 64, mults 1,2,4,8, 768-d BERT) is ~41.8 M parameters, like video-diffusion-pytorch's
    model = Unet3D(UnetConfig(dim=64, dim_mults=(1, 2, 4, 8), cond_dim=768))
    assert 41.0e6 < model.num_parameters() < 42.5e6


def test_frame_cond_breaks_temporal_symmetry():
    # A clip whose frames are all the same: with relative-only temporal attention and frame-identical FiLM (the
    # seed) every frame must get the same output, so the caption alone can never say where the object is in frame k.
    x = torch.randn(1, 3, 1, 8, 8).repeat(1, 1, 5, 1, 1)
    t, text = torch.tensor([900]), torch.randn(1, 16)
    out = tiny()(x, t, text)
    assert torch.allclose(out[:, :, :1].expand_as(out), out, atol=1e-5)
    model = tiny(frame_cond=True)
    out = model(x, t, text)
    assert not torch.allclose(out[:, :, :1].expand_as(out), out, atol=1e-3)
    # and the per-frame conditioning still depends on the caption
    assert not torch.allclose(out, model(x, t, text + 1), atol=1e-4)


def test_coord_input_gives_position_to_a_constant_input():
    # a constant clip: without coordinates every frame gets the same output (relative-only temporal attention),
    # with them the (frame, y, x) channels make every frame differ
    x, t, text = torch.zeros(1, 3, 3, 16, 16), torch.tensor([999]), torch.randn(1, 16)
    out = tiny()(x, t, text)
    assert torch.allclose(out[:, :, 0], out[:, :, 2], atol=1e-5)
    out = tiny(coord_input=True)(x, t, text)
    assert not torch.allclose(out[:, :, 0], out[:, :, 2], atol=1e-4)
    assert tiny(coord_input=True).init_conv.in_channels == 6
    assert tiny(coord_input=True, patch_size=2).init_conv.in_channels == 3 * 4 + 3


def test_num_res_blocks_per_level_sets_each_levels_blocks_down_and_up():
    model = tiny(num_res_blocks=(1, 3, 2))
    assert [level.num_blocks for level in model.downs] == [1, 3, 2]
    assert [level.num_blocks for level in model.ups] == [2, 3, 1]  # the up path mirrors the down path
    keys = model.state_dict().keys()
    assert any(k.startswith("downs.1.block3.") for k in keys) and not any(k.startswith("downs.0.block2.") for k in keys)
    assert tiny(num_res_blocks=2).state_dict().keys() == tiny().state_dict().keys()
    x = torch.randn(1, 3, 2, 8, 8)
    assert model(x, torch.tensor([10]), torch.randn(1, 16)).shape == x.shape


def test_patch_size_runs_the_unet_at_a_fraction_of_the_resolution():
    # 2x2 patches folded into channels: the first convolution sees (B*T, 3*4 [+3], H/2, W/2), the output is unfolded
    # back to full resolution with pixels inside a patch free to differ (not an upsampled half-resolution video)
    model = tiny(patch_size=2, coord_input=True)
    seen = []
    model.init_conv.register_forward_hook(lambda m, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
    x, t, text = torch.randn(1, 3, 2, 10, 14), torch.tensor([500]), torch.randn(1, 16)
    out = model(x, t, text)
    # 10x14 is padded to the spatial multiple (2 * 2**2 = 8): 16x16, then folded to 8x8
    assert model.config.spatial_multiple == 8
    assert seen == [((2, 15, 8, 8), (2, 8, 8, 8))]
    assert out.shape == x.shape
    assert not torch.allclose(out[..., 0:8:2, 0:8:2], out[..., 1:8:2, 1:8:2], atol=1e-3)


def reference_linear_attention(layer: SpatialLinearAttention, x):
    """The seed's linear attention written plainly on (N, C, P): LN over channels -> q, k, v -> softmax(q) over
    channels * scale, softmax(k) over pixels -> context = k v^T -> out = context^T q -> projection, residual."""
    n, c, h, w = x.shape
    seq = F.layer_norm(x.flatten(2).transpose(1, 2), (c,), layer.norm.weight, layer.norm.bias)  # (N, P, C)
    q, k, v = (seq @ layer.to_qkv.weight.T).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, h * w, layer.heads, layer.dim_head).permute(0, 2, 3, 1) for t in (q, k, v))  # (N,h,d,P)
    q = q.softmax(dim=-2) * layer.dim_head**-0.5
    k = k.softmax(dim=-1)
    context = torch.einsum("nhdp,nhep->nhde", k, v)
    out = torch.einsum("nhde,nhdp->nhep", context, q).reshape(n, -1, h * w).transpose(1, 2)
    out = out @ layer.to_out.weight.T + layer.to_out.bias
    return x + out.transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("channels_last", [True, False])
def test_spatial_linear_attention_equals_textbook_with_grads(channels_last):
    torch.manual_seed(0)
    layer = SpatialLinearAttention(12, heads=3, dim_head=8)
    x = torch.randn(4, 12, 5, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ours, ref = layer(x), reference_linear_attention(layer, x)
    assert torch.allclose(ours, ref, atol=1e-5)
    g = torch.randn_like(ref)
    params = [x, layer.to_qkv.weight, layer.to_out.weight, layer.norm.weight]
    for a, b in zip(torch.autograd.grad(ours, params, g), torch.autograd.grad(ref, params, g)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("dim_head", [16, 48])  # 48: only the first 32 channels of each head rotate
def test_rotary_folded_into_weights_equals_rotating_the_projection(dim_head):
    torch.manual_seed(0)
    frames, heads, c = 6, 3, 10
    weight = torch.randn(heads, dim_head, c)  # rows of each head's projection
    x = torch.randn(frames, 7, c)  # (T, N, C)
    cis = rotary_cis(frames, min(32, dim_head), x.device)
    folded = torch.einsum("tnc,thdc->tnhd", x, rotate_rows(weight, cis))
    projected = torch.einsum("tnc,hdc->tnhd", x, weight)
    assert torch.allclose(folded, apply_rotary(projected, cis[:, None, None]), atol=1e-5)
