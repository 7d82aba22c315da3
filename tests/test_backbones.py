"""Tests for backbones.py (Section 3.3, Figure 2: the backbone of the pixel-level module).

Every check compares against an independent computation: naive loops over positions, the
attention formula written out, closed-form parameter counts, published torchvision counts, and
the Hugging Face ResNet / MaskFormer-Swin ports loaded with the same random weights.
"""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
import torch.nn as nn

import backbones
import maskformer
from backbones import (
    FrozenBatchNorm2d,
    SwinTransformer,
    WindowAttention,
    attention_explicit,
    build_backbone,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from tooling import flops

STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@functools.cache
def built(name: str) -> nn.Module:
    """One default-built backbone per name, shared by the shape tests (construction is not free)."""
    torch.manual_seed(0)
    return build_backbone(name)


def small_swin(window_size: int = 7) -> SwinTransformer:
    """A narrow, shallow Swin with all four stages: cheap stand-in for the big configs."""
    return SwinTransformer(32, [2, 2, 2, 2], [1, 2, 4, 8], window_size=window_size)


def on_meta(name: str, **kwargs) -> nn.Module:
    """Build without allocating or initialising weights (fast parameter counting)."""
    with torch.device("meta"):
        return build_backbone(name, **kwargs)


# ---------------------------------------------------------------------------------------------
# Swin building blocks against naive loops
# ---------------------------------------------------------------------------------------------


def test_window_partition_matches_slicing_and_round_trips():
    B, H, W, C, ws = 2, 14, 21, 5, 7
    x = torch.randn(B, H, W, C)
    windows = window_partition(x, ws)
    nH, nW = H // ws, W // ws
    assert windows.shape == (B * nH * nW, ws, ws, C)
    for b in range(B):
        for r in range(nH):
            for c in range(nW):
                expected = x[b, r * ws:(r + 1) * ws, c * ws:(c + 1) * ws]
                assert torch.equal(windows[(b * nH + r) * nW + c], expected)
    assert torch.equal(window_reverse(windows, ws, H, W), x)


@pytest.mark.parametrize("ws", [2, 3, 7, 12])
def test_relative_position_index_matches_double_loop(ws):
    N = ws * ws
    expected = torch.empty(N, N, dtype=torch.long)
    for i in range(N):
        yi, xi = divmod(i, ws)
        for j in range(N):
            yj, xj = divmod(j, ws)
            expected[i, j] = (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
    index = relative_position_index(ws)
    assert torch.equal(index, expected)
    assert index.min() == 0 and index.max() == (2 * ws - 1) ** 2 - 1


@pytest.mark.parametrize("Hp,Wp,ws", [(14, 21, 7), (7, 7, 7), (24, 12, 12), (8, 12, 4)])
def test_shifted_window_mask_matches_naive_wraparound_rule(Hp, Wp, ws):
    """Within a window of the rolled map, two tokens may attend iff neither or both of them
    wrapped around the bottom edge, and likewise for the right edge (the reason for the mask)."""
    s = ws // 2
    mask = shifted_window_mask(Hp, Wp, ws, s)
    nH, nW, N = Hp // ws, Wp // ws, ws * ws
    assert mask.shape == (nH * nW, N, N)
    for r in range(nH):
        for c in range(nW):
            for p in range(N):
                # rolled position (y, x) came from ((y + s) % Hp, (x + s) % Wp): wrapped iff y + s >= Hp
                yp, xp = r * ws + p // ws, c * ws + p % ws
                for q in range(N):
                    yq, xq = r * ws + q // ws, c * ws + q % ws
                    same = (yp + s >= Hp) == (yq + s >= Hp) and (xp + s >= Wp) == (xq + s >= Wp)
                    assert mask[r * nW + c, p, q].item() == (0.0 if same else -100.0)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_explicit_formula(shifted):
    """softmax(Q K^T / sqrt(d) + B + M) V, with B gathered by a naive loop from the table."""
    torch.manual_seed(0)
    dim, heads, ws, batch = 12, 3, 4, 2
    attn = WindowAttention(dim, ws, heads)
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()  # make the bias matter
    mask = shifted_window_mask(8, 12, ws, ws // 2) if shifted else None  # (6, 16, 16)
    nW = 6
    x = torch.randn(batch * nW, ws * ws, dim)

    d, N = dim // heads, ws * ws
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(dim, dim=-1)  # (B_, N, dim) each
    q, k, v = (t.view(-1, N, heads, d).transpose(1, 2) for t in (q, k, v))  # (B_, heads, N, d)
    bias = torch.empty(heads, N, N)
    for i in range(N):
        for j in range(N):
            dy, dx = i // ws - j // ws, i % ws - j % ws
            bias[:, i, j] = attn.relative_position_bias_table[(dy + ws - 1) * (2 * ws - 1) + dx + ws - 1]
    scores = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(d) + bias  # (B_, heads, N, N)
    if shifted:
        scores = scores + mask.repeat(batch, 1, 1).unsqueeze(1)
    out = torch.einsum("bhnm,bhmd->bhnd", scores.softmax(-1), v)  # (B_, heads, N, d)
    expected = attn.proj(out.transpose(1, 2).reshape(-1, N, dim))

    torch.testing.assert_close(attn(x, mask), expected, atol=1e-5, rtol=1e-5)
    # the readable helper equals the same formula
    q2, k2, v2 = attn.split_heads(x)
    helper = attention_explicit(q2, k2, v2, attn.attention_bias(mask, x.shape[0]))
    torch.testing.assert_close(attn.proj(helper.transpose(1, 2).reshape(-1, N, dim)), expected,
                               atol=1e-5, rtol=1e-5)


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    dp = backbones.DropPath(0.5)
    x = torch.randn(64, 5, 3) + 3.0
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(x)
    ratio = (y / x).flatten(1)  # per sample: all 0 (dropped) or all 2 (kept, scaled by 1/0.5)
    for row in ratio:
        assert torch.allclose(row, torch.zeros_like(row)) or torch.allclose(row, torch.full_like(row, 2.0))
    kept = (ratio[:, 0] > 1).float().mean().item()
    assert 0.25 < kept < 0.75


def test_patch_merging_concatenation_order_and_padding():
    """Output token (i, j) = Linear(LN([x[2i,2j], x[2i+1,2j], x[2i,2j+1], x[2i+1,2j+1]])), zeros
    outside an odd-sized map."""
    torch.manual_seed(0)
    C, H, W = 3, 5, 3
    merge = backbones.PatchMerging(C)
    x = torch.randn(1, H, W, C)
    out = merge(x.reshape(1, H * W, C), H, W).view(1, 3, 2, 2 * C)

    def at(y, x_):
        return x[0, y, x_] if y < H and x_ < W else torch.zeros(C)

    for i in range(3):
        for j in range(2):
            cat = torch.cat([at(2 * i, 2 * j), at(2 * i + 1, 2 * j), at(2 * i, 2 * j + 1), at(2 * i + 1, 2 * j + 1)])
            torch.testing.assert_close(out[0, i, j], merge.reduction(merge.norm(cat)))


# ---------------------------------------------------------------------------------------------
# Whole backbones: shapes, gradients, determinism
# ---------------------------------------------------------------------------------------------


def check_features(model: nn.Module, H: int, W: int) -> None:
    model.eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, H, W))
    assert list(feats) == ["res2", "res3", "res4", "res5"]
    assert model.out_strides == STRIDES
    for name, f in feats.items():
        s = STRIDES[name]
        assert f.shape == (1, model.out_channels[name], math.ceil(H / s), math.ceil(W / s)), name
        assert torch.isfinite(f).all()


@pytest.mark.parametrize("size", [(333, 517), (35, 47), (1, 1)])
@pytest.mark.parametrize("name", ["resnet18", "resnet50", "swin_tiny"])
def test_output_shapes_any_input_size(name, size):
    check_features(built(name), *size)


def test_out_channels():
    assert on_meta("resnet50").out_channels == {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    assert on_meta("resnet18", width=32, norm="bn").out_channels == {
        "res2": 32, "res3": 64, "res4": 128, "res5": 256}
    assert on_meta("swin_tiny").out_channels == {"res2": 96, "res3": 192, "res4": 384, "res5": 768}
    assert on_meta("swin_large").out_channels == {"res2": 192, "res3": 384, "res4": 768, "res5": 1536}


def test_half_width_resnet_shapes():
    check_features(build_backbone("resnet34", width=32, norm="bn"), 97, 61)


@pytest.mark.parametrize("size", [(333, 517), (35, 47)])
def test_window12_swin_shapes(size):
    """Swin-B/L's window 12 path on a narrow, shallow model (cheap stand-in for the big ones)."""
    check_features(small_swin(window_size=12), *size)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet34", "resnet101", "swin_small", "swin_base", "swin_large"])
def test_large_backbone_shapes(name):
    check_features(build_backbone(name), 333, 517)
    check_features(build_backbone(name), 35, 47)


@pytest.mark.parametrize("make", [
    lambda: build_backbone("resnet18"),
    small_swin,
], ids=["resnet18", "small_swin"])
def test_bfloat16_autocast_stays_close_to_float32(make):
    """Mixed precision (the CUDA training path) keeps each norm's and attention's dtypes consistent."""
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(1, 3, 75, 99)
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x)
    for name in full:
        assert half[name].dtype == torch.bfloat16, name
        err = (half[name].float() - full[name]).norm() / full[name].norm()
        assert err < 0.05, (name, err.item())


@pytest.mark.parametrize("name,kwargs,size", [
    ("resnet18", dict(norm="bn", width=32), (2, 3, 64, 80)),
    ("swin_tiny", dict(drop_path_rate=0.0), (1, 3, 40, 56)),
])
def test_gradients_reach_every_parameter(name, kwargs, size):
    torch.manual_seed(0)
    model = build_backbone(name, **kwargs).train()
    feats = model(torch.randn(size))
    sum(f.pow(2).mean() for f in feats.values()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_frozen_bn_backbone_has_no_norm_parameters():
    model = build_backbone("resnet18")
    assert not any(".bn" in n or n.startswith("bn") or "downsample.1" in n for n, _ in model.named_parameters())
    assert n_params(model) == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("make,key", [
    (lambda: build_backbone("resnet18"), "conv1.weight"),
    (small_swin, "layers.0.blocks.0.attn.qkv.weight"),
], ids=["resnet18", "small_swin"])
def test_deterministic_given_seed(make, key):
    x = torch.randn(1, 3, 70, 90)
    outs, states = [], []
    for _ in range(2):
        torch.manual_seed(123)
        model = make().eval()
        states.append(model.state_dict())
        with torch.no_grad():
            outs.append(model(x))
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k
    torch.manual_seed(124)
    assert not torch.equal(make().state_dict()[key], states[0][key])  # the seed is what fixes them


# ---------------------------------------------------------------------------------------------
# FrozenBatchNorm2d
# ---------------------------------------------------------------------------------------------


def test_frozen_bn_equals_batchnorm_in_eval_and_loads_its_state_dict():
    torch.manual_seed(0)
    C = 7
    bn = nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.normal_()
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.1, 3.0)
    bn.num_batches_tracked += 5
    frozen = FrozenBatchNorm2d(C)
    frozen.load_state_dict(bn.state_dict(), strict=True)  # num_batches_tracked is accepted and dropped
    x = torch.randn(3, C, 5, 6)
    torch.testing.assert_close(frozen(x), bn.eval()(x))


def test_frozen_bn_starts_as_identity():
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(FrozenBatchNorm2d(4)(x), x, atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------

# torchvision's published ImageNet classifiers (resnet18/34/50/101) minus fc (512*1000+1000 or
# 2048*1000+1000): the backbone with trainable BatchNorm must match exactly.
TORCHVISION_NO_FC = {
    "resnet18": 11_689_512 - 513_000,
    "resnet34": 21_797_672 - 513_000,
    "resnet50": 25_557_032 - 2_049_000,
    "resnet101": 44_549_160 - 2_049_000,
}


@pytest.mark.parametrize("name", list(TORCHVISION_NO_FC))
def test_resnet_param_counts_match_torchvision(name):
    assert n_params(on_meta(name, norm="bn")) == TORCHVISION_NO_FC[name]
    frozen = on_meta(name)  # FrozenBatchNorm2d keeps weight/bias as buffers
    affine = sum(b.numel() for n, b in frozen.named_buffers() if n.endswith((".weight", ".bias")))
    assert n_params(frozen) + affine == TORCHVISION_NO_FC[name]


def test_resnet_state_dict_names_are_torchvision_style():
    keys = set(build_backbone("resnet50").state_dict())
    for k in ["conv1.weight", "bn1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer1.0.bn3.bias",
              "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "layer4.2.conv2.weight"]:
        assert k in keys, k
    assert "layer1.1.downsample.0.weight" not in keys and not any(k.startswith("fc") for k in keys)


def swin_closed_form_count(embed_dim, depths, num_heads, window_size) -> int:
    total = 3 * 4 * 4 * embed_dim + embed_dim + 2 * embed_dim  # patch conv (with bias) + LayerNorm
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        C = embed_dim * 2**i
        block = (2 * C + (3 * C * C + 3 * C) + (2 * window_size - 1) ** 2 * heads + (C * C + C)
                 + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C))  # norm1 qkv table proj norm2 fc1 fc2
        total += depth * block + 2 * C  # + output norm{i}
        if i < len(depths) - 1:
            total += 8 * C + 4 * C * 2 * C  # merging LayerNorm(4C) + Linear(4C -> 2C, no bias)
    return total


@pytest.mark.parametrize("name", list(backbones.SWINS))
def test_swin_param_counts_closed_form(name):
    assert n_params(on_meta(name)) == swin_closed_form_count(**backbones.SWINS[name])


def test_swin_tiny_count_matches_official_classifier():
    # official Swin-T classifier: 28,288,354 params; minus its head (768*1000 + 1000) and final
    # LayerNorm (2*768), plus MaskFormer's four output LayerNorms (2*(96+192+384+768))
    assert n_params(on_meta("swin_tiny")) == 28_288_354 - 769_000 - 1_536 + 2_880


# ---------------------------------------------------------------------------------------------
# Equivalence with the Hugging Face ports (reference implementations; tests only)
# ---------------------------------------------------------------------------------------------


def randomize_(model: nn.Module) -> None:
    """Perturb every parameter / BN statistic so that no term is trivially zero or one."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.02))
            if "relative_position_bias_table" in name:
                p.normal_()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def hf_swin_to_ours(state: dict) -> dict:
    """Rename a transformers MaskFormerSwinBackbone state dict to our (Microsoft-style) names."""
    out = {}
    renames = [("model.embeddings.patch_embeddings.projection", "patch_embed.proj"),
               ("model.embeddings.norm", "patch_embed.norm"), ("model.encoder.layers", "layers"),
               ("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
               ("attention.self.relative_position", "attn.relative_position"),
               ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
               ("output.dense", "mlp.fc2")]
    for key, value in state.items():
        if key.startswith("model.layernorm."):  # final norm of the classifier; unused by MaskFormer
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[re.sub(r"^hidden_states_norms\.(\d)", r"norm\1", key)] = value
    for key in [k for k in out if ".attention.self.query." in k]:  # separate q, k, v -> one qkv
        prefix, kind = key.split(".attention.self.query.")
        parts = [out.pop(f"{prefix}.attention.self.{n}.{kind}") for n in ("query", "key", "value")]
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat(parts)
    return out


SWIN_CASES = {
    "swin_tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "window12": dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=12),
}


@pytest.mark.parametrize("case", list(SWIN_CASES))
def test_swin_matches_huggingface_maskformer_swin(case):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference MaskFormer-Swin")
    from transformers.models.maskformer.modeling_maskformer_swin import MaskFormerSwinBackbone

    spec = SWIN_CASES[case]
    torch.manual_seed(0)
    config = transformers.MaskFormerSwinConfig(**spec, drop_path_rate=0.0,
                                               out_features=["stage1", "stage2", "stage3", "stage4"])
    reference = MaskFormerSwinBackbone(config).eval()
    randomize_(reference)
    ours = SwinTransformer(**spec).eval()
    ours.load_state_dict(hf_swin_to_ours(reference.state_dict()), strict=True)
    # HF's backbone has one extra (unused) final LayerNorm of 2 * 8C parameters
    assert n_params(ours) == n_params(reference) - 2 * 8 * spec["embed_dim"]
    # 35x47: res4 / res5 are smaller than one window; batch 2 checks the per-image shift masks
    for batch, size in [(1, (333, 517)), (2, (35, 47))]:
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            expected = reference(x).feature_maps
            got = ours(x)
        for i, name in enumerate(["res2", "res3", "res4", "res5"]):
            torch.testing.assert_close(got[name], expected[i], atol=1e-4, rtol=1e-4, msg=f"{case} {size} {name}")


def hf_resnet_to_ours(state: dict) -> dict:
    """Rename a transformers ResNetBackbone state dict to torchvision names."""
    out = {}
    for key, value in state.items():
        key = key.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
        m = re.match(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)", key)
        if m:
            stage, block, rest = int(m.group(1)), m.group(2), m.group(3)
            rest = rest.replace("shortcut.convolution", "downsample.0").replace("shortcut.normalization",
                                                                                 "downsample.1")
            rest = re.sub(r"layer\.(\d)\.convolution", lambda r: f"conv{int(r.group(1)) + 1}", rest)
            rest = re.sub(r"layer\.(\d)\.normalization", lambda r: f"bn{int(r.group(1)) + 1}", rest)
            key = f"layer{stage + 1}.{block}.{rest}"
        out[key] = value
    return out


@pytest.mark.parametrize("name,layer_type,norm", [("resnet18", "basic", "bn"), ("resnet50", "bottleneck", "frozen_bn")])
def test_resnet_matches_huggingface_resnet(name, layer_type, norm):
    transformers = pytest.importorskip("transformers", reason="transformers is the reference ResNet")

    torch.manual_seed(0)
    ours = build_backbone(name, norm=norm).eval()
    depths = [len(getattr(ours, f"layer{i}")) for i in range(1, 5)]
    config = transformers.ResNetConfig(layer_type=layer_type, depths=depths,
                                       hidden_sizes=list(ours.out_channels.values()),
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    reference = transformers.ResNetBackbone(config).eval()
    randomize_(reference)
    ours.load_state_dict(hf_resnet_to_ours(reference.state_dict()), strict=True)
    x = torch.randn(1, 3, 333, 517)
    with torch.no_grad():
        expected = reference(x).feature_maps
        got = ours(x)
    for i, key in enumerate(["res2", "res3", "res4", "res5"]):
        scale = expected[i].abs().max().item()
        torch.testing.assert_close(got[key], expected[i], atol=1e-5 * max(scale, 1.0), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="unknown name 'resnet152'"):
        build_backbone("resnet152")
    with pytest.raises(TypeError, match="drop_path_rate"):
        build_backbone("resnet50", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="norm"):
        build_backbone("resnet18", norm="gn")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_backbone("resnet18")(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        on_meta("swin_tiny")(torch.randn(1, 1, 32, 32, device="meta"))


# ---------------------------------------------------------------------------------------------
# R101c: DeepLab stem + res5 multi-grid (official build_resnet_deeplab_backbone)
# ---------------------------------------------------------------------------------------------


def deeplab_resnet_reference(state: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """R101c written out from detectron2's DeepLabStem + BottleneckBlock (eval-mode BatchNorm),
    reading the tensors by name: stem 3x3/2, 3x3, 3x3, max-pool; res5 block j dilated (1, 2, 4)[j]."""
    def conv_bn(conv: str, bn: str, x: torch.Tensor, stride: int = 1, dilation: int = 1, relu: bool = True):
        w = state[f"{conv}.weight"]
        y = nn.functional.conv2d(x, w, stride=stride, padding=dilation * (w.shape[-1] // 2), dilation=dilation)
        y = nn.functional.batch_norm(y, state[f"{bn}.running_mean"], state[f"{bn}.running_var"],
                                     state[f"{bn}.weight"], state[f"{bn}.bias"], training=False, eps=1e-5)
        return nn.functional.relu(y) if relu else y

    x = conv_bn("conv1", "bn1", x, stride=2)
    x = conv_bn("conv2", "bn2", x)
    x = conv_bn("conv3", "bn3", x)
    x = nn.functional.max_pool2d(x, 3, 2, 1)
    features = {}
    for i, blocks in enumerate([3, 4, 23, 3]):
        for j in range(blocks):
            p, stride = f"layer{i + 1}.{j}", (2 if j == 0 and i > 0 else 1)
            dilation = (1, 2, 4)[j] if i == 3 else 1
            y = conv_bn(f"{p}.conv1", f"{p}.bn1", x)
            y = conv_bn(f"{p}.conv2", f"{p}.bn2", y, stride=stride, dilation=dilation)
            y = conv_bn(f"{p}.conv3", f"{p}.bn3", y, relu=False)
            shortcut = conv_bn(f"{p}.downsample.0", f"{p}.downsample.1", x, stride, relu=False) if j == 0 else x
            x = nn.functional.relu(y + shortcut)
        features[f"res{i + 2}"] = x
    return features


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_resnet101c_equals_the_deeplab_reference(norm):
    """Random weights and BatchNorm statistics; 129 x 97 input (res5 5 x 4, so dilation 2 and 4 matter)."""
    torch.manual_seed(0)
    model = build_backbone("resnet101c", norm=norm).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("weight") and t.dim() == 1:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
    x = torch.randn(1, 3, 129, 97, generator=g)
    with torch.no_grad():
        ours, expected = model(x), deeplab_resnet_reference(model.state_dict(), x)
    for k in ("res2", "res3", "res4", "res5"):
        assert ours[k].shape == expected[k].shape
        torch.testing.assert_close(ours[k], expected[k], rtol=1e-4, atol=1e-4 * expected[k].abs().max().item())
    assert ours["res5"].shape[-2:] == (math.ceil(129 / 32), math.ceil(97 / 32))


def test_resnet101c_param_count_by_hand():
    """R101 (torchvision, no fc) minus the 7x7 stem, plus three 3x3 convs (3->64->64->128) and their
    norms, plus the wider input (128 instead of 64) of res2's first 1x1 conv and projection."""
    basic_stem = 3 * 64 * 7 * 7 + 2 * 64
    deeplab_stem = 9 * (3 * 64 + 64 * 64 + 64 * 128) + 2 * (64 + 64 + 128)
    wider_res2 = 64 * 64 + 64 * 256  # conv1 (64 x 128 instead of 64 x 64), downsample (256 x 128 vs 256 x 64)
    expected = TORCHVISION_NO_FC["resnet101"] - basic_stem + deeplab_stem + wider_res2
    assert n_params(on_meta("resnet101c", norm="bn")) == expected
    model = build_backbone("resnet101c")
    assert [model.layer4[j].conv2.dilation for j in range(3)] == [(1, 1), (2, 2), (4, 4)]
    assert all(b.conv2.dilation == (1, 1) for stage in (model.layer1, model.layer2, model.layer3) for b in stage)
    assert model.out_channels == build_backbone("resnet101").out_channels


def test_resnet_variant_arguments_are_checked():
    with pytest.raises(ValueError, match="stem"):
        backbones.ResNet(backbones.Bottleneck, [3, 4, 6, 3], stem="deep")
    with pytest.raises(ValueError, match="one dilation per res5"):
        backbones.ResNet(backbones.Bottleneck, [3, 4, 6, 3], res5_dilations=[1, 2])


def test_r101c_maskformer_params_and_flops_beside_the_paper():
    """Table 1's R101c row: 60M parameters, 80G FLOPs (fvcore) at 512 x 512; our counter counts a few
    % less, as for every other row (no norms / upsampling), within the ±10% used for them."""
    with torch.device("meta"):
        model = maskformer.build_model("r101c")
        r101 = maskformer.build_model("r101")
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6) == 60
    # the difference by hand, as in test_resnet101c_param_count_by_hand, without norm parameters
    # (the model's backbone norms are frozen): DeepLab stem convs - the 7x7 stem + res2's wider input
    stems = 9 * (3 * 64 + 64 * 64 + 64 * 128) - 3 * 64 * 7 * 7
    assert params - sum(p.numel() for p in r101.parameters()) == stems + 64 * 64 + 64 * 256
    assert flops.count_flops(model, 512) == pytest.approx(80, rel=0.10)
