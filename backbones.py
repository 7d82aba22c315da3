"""Backbones: the first box of MaskFormer's pixel-level module (paper Section 3.3, Figure 2).

The paper's pixel-level module starts with a backbone that maps an image of size H x W to a
low-resolution feature map F in R^{C_F x H/S x W/S} with S = 32. The pixel decoder (an FPN, see
maskformer.py) also reads the intermediate maps, so every backbone here returns four maps:

    {"res2": stride 4, "res3": stride 8, "res4": stride 16, "res5": stride 32}

each of spatial size ceil(H / stride) x ceil(W / stride) for ANY input size H x W. "res5" is the
paper's F. Two families are written by hand (no torchvision / timm):

* ResNet-18/34/50/101 (He et al. 2016), torchvision layout: "basic" stem (7x7/2 conv, norm,
  ReLU, 3x3/2 max-pool) and bottlenecks with the stride on the 3x3 conv (detectron2's
  ``STRIDE_IN_1X1 False``). Parameter names follow torchvision (conv1, bn1, layer1..layer4,
  downsample.0/.1), so an ImageNet ``.pth`` loads 1:1 once its ``fc.*`` keys are dropped.
  "resnet101c" (the paper's R101c, official ``build_resnet_deeplab_backbone``): the DeepLab
  stem (three 3x3 convs, 64 -> 64 -> 128 channels, named conv1..conv3 / bn1..bn3) and res5
  blocks whose 3x3 convs are dilated 1, 2, 4 (the official RES5_MULTI_GRID; stride still 32).
* Swin-T/S/B/L (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using
  Shifted Windows"), as adapted for dense prediction in the official MaskFormer repository
  (mask_former/modeling/backbone/swin.py): any input size (padding to multiples of the patch
  size, of the window size and of 2), a LayerNorm on each of the four outputs (norm0..norm3),
  and the outputs taken *before* each patch-merging step. Parameter names follow Microsoft's
  checkpoints (patch_embed, layers.{i}.blocks.{j}.attn.qkv, ...).

Reading order: ``build_backbone`` (bottom) -> ``ResNet.forward`` -> ``Bottleneck`` ->
``FrozenBatchNorm2d``; then ``SwinTransformer.forward`` -> ``PatchEmbed`` -> ``SwinStage`` ->
``SwinBlock`` -> ``window_partition`` / ``shifted_window_mask`` -> ``WindowAttention`` ->
``PatchMerging``. Both of the paper's backbone families are here: Table 1 and every experiment of §4
use one of them.

Differences from the official code (all deliberate, none changes the computation):

* Window attention calls ``F.scaled_dot_product_attention`` with the relative-position bias
  plus the shift mask as an additive ``attn_mask`` (fused kernel) instead of writing out
  softmax(QK^T/sqrt(d) + B + M)V; ``attention_explicit`` keeps that formula for reading and for
  the tests, which check that both agree.
* The official Swin backbone defines but never applies its Linear/LayerNorm initialiser (its
  ``init_weights`` builds ``_init_weights`` and returns), so from scratch its Linear layers keep
  PyTorch's default init. We apply the intended Swin init (truncated normal, std 0.02, zero
  biases, LayerNorm 1/0). Irrelevant once ImageNet weights are loaded.
* ``FrozenBatchNorm2d`` also accepts (and ignores) the ``num_batches_tracked`` entries of a
  torchvision state dict, so ``load_state_dict(..., strict=True)`` works without renaming.
* No frozen stages, no gradient checkpointing (the official configs freeze none: FREEZE_AT 0).
* Not a difference, but often assumed: the official dense-prediction Swin does NOT shrink the
  window to the feature size when a feature map is smaller than the window (that rule lives
  only in the fixed-resolution *classification* Swin). It pads the map up to one window and
  keeps the shift; so do we, as does the Hugging Face MaskFormer-Swin port that published
  checkpoints load into.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def _check_images(x: torch.Tensor, who: str) -> None:
    """Clear error for a wrong backbone input: the Figure 2 backbone takes images (B, 3, H, W)."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{who}.forward: expected images of shape (B, 3, H, W), got {tuple(x.shape)}")


# =============================================================================================
# Part 1. ResNet (Figure 2, pixel-level module, "backbone"; He et al. 2016)
# =============================================================================================


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (detectron2's default backbone norm).

    Used by the official MaskFormer ResNet backbones (Section 3.3 backbone, with ImageNet
    weights): all four tensors are buffers, so nothing is trained and batch size does not
    matter. For x of shape (B, C, H, W):

        scale = weight / sqrt(running_var + eps),  shift = bias - running_mean * scale
        y = x * scale + shift

    which equals nn.BatchNorm2d in eval mode with the same four tensors. Initial values make it
    exactly the identity (running_var = 1 - eps, as detectron2 does).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-channel affine map this norm applies: (scale, shift), each (C,)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        shift = self.bias - self.running_mean * scale  # (C,)
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        scale = scale.to(x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1); keeps x's dtype under autocast
        shift = shift.to(x.dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
        return x * scale + shift

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torchvision / nn.BatchNorm2d checkpoints carry a counter we have no use for
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(norm: str, channels: int) -> nn.Module:
    """The ResNet backbone's norm layer (Section 3.3 backbone), acting on (B, channels, H, W):
    "frozen_bn" (official, with ImageNet weights) or "bn" (trainable, for a backbone trained from
    scratch, e.g. the `tiny` config)."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"ResNet norm: expected 'frozen_bn' or 'bn', got {norm!r}")


def conv_norm(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """norm(conv(x)) for the ResNet's conv + norm pairs, (B, C_in, H, W) -> (B, C_out, H', W').

    A FrozenBatchNorm2d is a fixed per-channel affine map, so it is folded into the convolution:
    conv(x) * scale + shift = conv with weight W * scale and bias shift. Same result (up to float
    rounding), one pass over the activations instead of three (conv, multiply, add), and in
    training no saved copy for the norm's backward; the gradient still reaches conv.weight
    through the product. A trainable BatchNorm2d ("bn") is applied as it is.
    """
    if not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv(x))
    scale, shift = norm.scale_and_shift()  # (C_out,) each
    weight = conv.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in, k, k): W * scale, per output channel
    return F.conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def conv_shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Sequential | None:
    """ResNet projection shortcut (Section 3.3 backbone): 1x1 conv with stride + norm when the
    residual changes shape, (B, C_in, H, W) -> (B, C_out, ceil(H/stride), ceil(W/stride)); else None.

    Named ``downsample`` in the blocks, as torchvision does (keys downsample.0 / downsample.1).
    """
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        make_norm(norm, out_channels),
    )


class BasicBlock(nn.Module):
    """ResNet-18/34 residual block (Section 3.3 backbone): two 3x3 convs, the first with the stride.

    (B, C_in, H, W) -> (B, planes, ceil(H/stride), ceil(W/stride)).
    """

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv_shortcut(in_channels, planes, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else conv_norm(*self.downsample, x)  # (B, planes, H', W')
        out = self.relu(conv_norm(self.conv1, self.bn1, x))  # (B, planes, H', W')
        out = conv_norm(self.conv2, self.bn2, out)  # (B, planes, H', W')
        out += identity  # in place: no new (B, planes, H', W') buffer
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet-50/101 bottleneck (Section 3.3 backbone): 1x1 reduce, 3x3 (with the stride), 1x1 expand x4.

    Stride on the 3x3 conv = torchvision "ResNet v1.5" = detectron2 ``STRIDE_IN_1X1 False``,
    the setting the official MaskFormer uses. (B, C_in, H, W) -> (B, 4*planes, ceil(H/s), ceil(W/s)).
    `dilation` spreads the 3x3 conv's taps (detectron2's BottleneckBlock ``dilation``).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, norm: str, dilation: int = 1):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = make_norm(norm, planes)
        # dilation > 1 (R101c's res5 "multi-grid"): the 3x3 taps spread `dilation` pixels apart,
        # padded by as much, so the output size is that of the undilated conv
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = conv_shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else conv_norm(*self.downsample, x)  # (B, 4*planes, H', W')
        out = self.relu(conv_norm(self.conv1, self.bn1, x))  # (B, planes, H, W)
        out = self.relu(conv_norm(self.conv2, self.bn2, out))  # (B, planes, H', W')
        out = conv_norm(self.conv3, self.bn3, out)  # (B, 4*planes, H', W')
        out += identity  # in place: no new (B, 4*planes, H', W') buffer
        return self.relu(out)


class ResNet(nn.Module):
    """ResNet backbone (Section 3.3, Figure 2: pixel-level module, "backbone").

    x (B, 3, H, W) -> {"res2": (B, C2, ceil(H/4), ceil(W/4)), "res3": /8, "res4": /16, "res5": /32}
    with C_i = width * 2^(i-2) * expansion (R50: 256, 512, 1024, 2048; R18: 64 ... 512).

    Args:
        block: BasicBlock (R18/34) or Bottleneck (R50/101).
        layers: blocks per stage, e.g. [3, 4, 6, 3] for R50.
        norm: "frozen_bn" (official default) or "bn" (trainable; from-scratch training).
        width: stem width and base width of the stages (64 in every standard ResNet).
        stem: "basic" (7x7/2 conv) or "deeplab" (three 3x3 convs to 2 * width channels: R101c,
            the official ``build_resnet_deeplab_backbone`` with STEM_TYPE "deeplab").
        res5_dilations: the 3x3 dilation of each res5 block (R101c: [1, 2, 4], the official
            RES5_MULTI_GRID with RES5_DILATION 1; the stride stays 2, so res5 is still stride 32).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 norm: str = "frozen_bn", width: int = 64, stem: str = "basic",
                 res5_dilations: list[int] | None = None):
        super().__init__()
        if width < 1:
            raise ValueError(f"ResNet width: expected a positive integer, got {width}")
        if stem not in ("basic", "deeplab"):
            raise ValueError(f"ResNet stem: expected 'basic' or 'deeplab', got {stem!r}")
        if res5_dilations is not None and (block is not Bottleneck or len(res5_dilations) != layers[-1]):
            raise ValueError(f"ResNet res5_dilations: expected one dilation per res5 bottleneck "
                             f"({layers[-1]}), got {res5_dilations}")
        make_norm(norm, 1)  # validate the name early
        self.relu = nn.ReLU(inplace=True)
        if stem == "basic":  # 7x7/2 conv + norm + ReLU
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = make_norm(norm, width)
            stem_channels = width
        else:  # deeplab: 3x3/2 conv (3 -> width), 3x3 (width -> width), 3x3 (width -> 2 width), each + norm + ReLU
            stem_channels = 2 * width
            for k, (c_in, c_out, stride) in enumerate([(3, width, 2), (width, width, 1), (width, stem_channels, 1)]):
                self.add_module(f"conv{k + 1}", nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False))
                self.add_module(f"bn{k + 1}", make_norm(norm, c_out))
        self.stem_convs = 1 if stem == "basic" else 3
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)  # then 3x3/2 max-pool -> stride 4
        # res2..res5: stage i has planes = width * 2^(i-2); the first block of res3..res5 halves H, W
        in_channels = stem_channels
        self.out_channels: dict[str, int] = {}
        for i, num_blocks in enumerate(layers):
            planes, stride = width * 2**i, (1 if i == 0 else 2)
            dilations = res5_dilations if (i == 3 and res5_dilations) else [1] * num_blocks
            blocks = []
            for j in range(num_blocks):
                extra = {"dilation": dilations[j]} if dilations[j] != 1 else {}
                blocks.append(block(in_channels, planes, stride if j == 0 else 1, norm, **extra))
                in_channels = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels[f"res{i + 2}"] = in_channels
        self.out_strides = dict(OUT_STRIDES)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision / detectron2 ("c2_msra_fill"): Kaiming normal, fan_out, ReLU gain; norms 1 / 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_images(x, "ResNet")
        # channels-last (NHWC) memory, the layout oneDNN (CPU) and cuDNN (tensor cores) convolve
        # fastest; same values and shapes, and every feature map below inherits it
        x = x.contiguous(memory_format=torch.channels_last)
        for k in range(1, self.stem_convs + 1):  # basic: conv1 only; deeplab: conv1, conv2, conv3
            x = self.relu(conv_norm(getattr(self, f"conv{k}"), getattr(self, f"bn{k}"), x))  # (B, C, ceil(H/2), ...)
        x = self.maxpool(x)  # (B, stem channels, ceil(H/4), ceil(W/4))
        features = {}
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)  # (B, C_i, ceil(H/2^(i+2)), ceil(W/2^(i+2)))
            features[f"res{i + 2}"] = x
        return features


# =============================================================================================
# Part 2. Swin Transformer (Figure 2 backbone; Liu et al. 2021, MaskFormer's dense version)
# =============================================================================================


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Cut a feature map into non-overlapping windows (Swin Section 3.2, "W-MSA").

    x (B, H, W, C), H and W multiples of window_size -> (B * nH * nW, window_size, window_size, C),
    windows ordered batch-major, then row-major over the window grid.
    """
    B, H, W, C = x.shape
    ws = window_size
    x = x.view(B, H // ws, ws, W // ws, ws, C)  # (B, nH, ws, nW, ws, C)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous()  # (B, nH, nW, ws, ws, C)
    return x.view(-1, ws, ws, C)  # (B*nH*nW, ws, ws, C)


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of window_partition: (B * nH * nW, ws, ws, C) -> (B, H, W, C)."""
    ws, C = window_size, windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)  # (B, nH, nW, ws, ws, C)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous()  # (B, nH, ws, nW, ws, C)
    return x.view(-1, H, W, C)  # (B, H, W, C)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into the relative-position bias table for every pair of tokens in a window.

    Swin Section 3.2, "relative position bias": token i at (y_i, x_i) and token j at (y_j, x_j)
    of a ws x ws window get bias B_hat[y_i - y_j, x_i - x_j], with offsets in [-(ws-1), ws-1];
    the table has (2ws-1)^2 rows, stored row-major:

        index(i, j) = (y_i - y_j + ws - 1) * (2ws - 1) + (x_i - x_j + ws - 1)

    Returns a long tensor (ws*ws, ws*ws), tokens numbered row-major inside the window.
    """
    ws = window_size
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")  # (ws, ws) each
    ys, xs = ys.flatten(), xs.flatten()  # (N,), N = ws*ws
    dy = ys[:, None] - ys[None, :] + ws - 1  # (N, N) in [0, 2ws-2]
    dx = xs[:, None] - xs[None, :] + ws - 1  # (N, N)
    return dy * (2 * ws - 1) + dx  # (N, N)


def shifted_window_mask(Hp: int, Wp: int, window_size: int, shift_size: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """Additive attention mask for shifted windows (Swin Section 3.2, "efficient batch computation").

    After the feature map (already padded to Hp x Wp, multiples of the window) is rolled by
    -shift_size, some windows hold tokens that were far apart before the roll (they wrapped
    around the border). Tokens may only attend within the same sub-region: label every padded
    position by which of three bands it lies in along each axis,
        [0, Hp - ws), [Hp - ws, Hp - shift), [Hp - shift, Hp)
    and mask pairs with different labels by -100 (the official value; exp(-100) ~ 0).

    Returns (nW, N, N) with nW = (Hp/ws)*(Wp/ws), N = ws*ws; 0 = may attend, -100 = masked.
    Computed for the PADDED size, as in the official code.
    """
    ws, s = window_size, shift_size
    rows = torch.arange(Hp, device=device)
    cols = torch.arange(Wp, device=device)
    row_band = (rows >= Hp - ws).long() + (rows >= Hp - s).long()  # (Hp,) in {0, 1, 2}
    col_band = (cols >= Wp - ws).long() + (cols >= Wp - s).long()  # (Wp,)
    labels = (row_band[:, None] * 3 + col_band[None, :]).float()  # (Hp, Wp) in {0..8}
    labels = window_partition(labels[None, :, :, None], ws).view(-1, ws * ws)  # (nW, N)
    differ = labels[:, None, :] != labels[:, :, None]  # (nW, N, N)
    return torch.zeros(differ.shape, device=device).masked_fill(differ, -100.0)  # (nW, N, N)


def attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
    """The attention formula written out (Swin Eq. 4): softmax(Q K^T / sqrt(d) + B + M) V.

    q, k, v (B_, heads, N, d); attn_bias = B + M broadcastable to (B_, heads, N, N).
    Returns (B_, heads, N, d). WindowAttention computes the same with a fused kernel.
    """
    d = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / d**0.5 + attn_bias  # (B_, heads, N, N)
    return scores.softmax(dim=-1) @ v  # (B_, heads, N, d)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with relative position bias (Swin Sec. 3.2).

    x (B_, N, C) with B_ = batch * windows, N = ws*ws tokens -> (B_, N, C).
    Parameters: qkv (C -> 3C, with bias), proj (C -> C), relative_position_bias_table
    ((2ws-1)^2, heads); buffer relative_position_index (N, N).
    """

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.window_size = window_size
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B_, N, C) -> q, k, v, each (B_, heads, N, C/heads)."""
        B_, N, C = x.shape
        qkv = self.qkv(x).view(B_, N, 3, self.num_heads, C // self.num_heads)  # (B_, N, 3, heads, d)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B_, heads, N, d)
        return qkv[0], qkv[1], qkv[2]

    def attention_bias(self, mask: torch.Tensor | None, num_windows_total: int) -> torch.Tensor:
        """B + M: relative-position bias plus (for shifted windows) the shift mask.

        mask (nW, N, N) or None -> (1, heads, N, N) without a mask, else (B_, heads, N, N) with
        B_ = num_windows_total = batch * nW (windows are batch-major, see window_partition).
        """
        N = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # (N*N, heads)
        bias = bias.view(N, N, self.num_heads).permute(2, 0, 1)  # (heads, N, N)
        if mask is None:
            return bias.unsqueeze(0)  # (1, heads, N, N)
        nW = mask.shape[0]
        bias = bias.unsqueeze(0) + mask.unsqueeze(1)  # (nW, heads, N, N)
        return bias.repeat(num_windows_total // nW, 1, 1, 1)  # (B_, heads, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        q, k, v = self.split_heads(x)  # (B_, heads, N, d) each
        attn_bias = self.attention_bias(mask, B_).to(q.dtype)  # (B_ or 1, heads, N, N)
        # Swin Eq. 4: Attention(Q, K, V) = softmax(Q K^T / sqrt(d) + B + M) V  (fused kernel)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)  # (B_, heads, N, d)
        out = out.transpose(1, 2).reshape(B_, N, C)  # (B_, N, C)
        return self.proj(out)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016) on the residual branches of a Swin block (Swin Eq. 3;
    the Swin backbone of Section 3.3 trains with rate 0.3): in training, drop a branch for a whole
    sample with probability p and scale kept samples by 1/(1-p); identity in eval.
    x (B, ...) -> same shape."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # (B, 1, ..., 1): one coin per sample
        return x * x.new_empty(shape).bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """The MLP of a Swin block (Swin Eq. 3): Linear(C -> 4C), GELU, Linear(4C -> C). (..., C) -> (..., C)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock(nn.Module):
    """One Swin Transformer block (Swin Eq. 3; W-MSA if shift_size == 0, else SW-MSA):

        z' = z + DropPath(W-MSA(LN(z)))        z'' = z' + DropPath(MLP(LN(z')))

    x (B, H*W, C) with its (H, W) -> (B, H*W, C). The map is zero-padded on the right/bottom to
    multiples of the window (after norm1, as official), attended, and cropped back; padded tokens
    are not masked out (official behaviour).
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, drop_path: float,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, H: int, W: int, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, C = x.shape
        ws, s = self.window_size, self.shift_size
        shortcut = x
        x = self.norm1(x).view(B, H, W, C)  # (B, H, W, C)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # (B, Hp, Wp, C)
        Hp, Wp = H + pad_b, W + pad_r
        if s > 0:  # cyclic shift: the windows of this block straddle the previous block's windows
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))  # (B, Hp, Wp, C)
        windows = window_partition(x, ws).view(-1, ws * ws, C)  # (B*nW, N, C)
        windows = self.attn(windows, attn_mask if s > 0 else None)  # (B*nW, N, C)
        x = window_reverse(windows.view(-1, ws, ws, C), ws, Hp, Wp)  # (B, Hp, Wp, C)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))  # (B, Hp, Wp, C)
        x = x[:, :H, :W, :].reshape(B, H * W, C)  # (B, H*W, C)
        # Swin Eq. 3: residual around (S)W-MSA, then around the MLP
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Swin's downsampling between stages (Swin Section 3.1, "patch merging").

    Concatenate each 2x2 neighbourhood (order x0=[0::2, 0::2], x1=[1::2, 0::2], x2=[0::2, 1::2],
    x3=[1::2, 1::2], as in the official code, so checkpoints load), LayerNorm(4C), Linear(4C -> 2C).
    x (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C); odd H or W is zero-padded on the bottom/right.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, L, C = x.shape
        x = x.view(B, H, W, C)  # (B, H, W, C)
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))  # (B, 2*ceil(H/2), 2*ceil(W/2), C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        # x: (B, ceil(H/2), ceil(W/2), 4C)
        x = x.view(B, -1, 4 * C)  # (B, ceil(H/2)*ceil(W/2), 4C)
        return self.reduction(self.norm(x))  # (B, ceil(H/2)*ceil(W/2), 2C)


class SwinStage(nn.Module):
    """One Swin stage ("BasicLayer" officially): `depth` blocks alternating W-MSA / SW-MSA
    (shift = window // 2 on odd blocks), then an optional PatchMerging (``downsample``) that the
    caller applies, because MaskFormer reads the features *before* merging.

    forward: x (B, H*W, C) -> (B, H*W, C).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, drop_path: list[float],
                 downsample: bool):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if j % 2 == 0 else self.shift_size, drop_path[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        ws = self.window_size
        # one shift mask per stage, for the size padded to whole windows
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        attn_mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, device=x.device)  # (nW, N, N)
        for block in self.blocks:
            x = block(x, H, W, attn_mask)  # (B, H*W, C)
        return x


class PatchEmbed(nn.Module):
    """Swin's patch partition + linear embedding (Swin Section 3.1) as a 4x4/4 conv, then LayerNorm.

    x (B, 3, H, W) -> tokens (B, h*w, C) and (h, w) = (ceil(H/4), ceil(W/4)); the image is
    zero-padded on the right/bottom to a multiple of the patch size first.
    """

    def __init__(self, embed_dim: int, patch_size: int = 4):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        B, _, H, W = x.shape
        p = self.patch_size
        x = F.pad(x, (0, (p - W % p) % p, 0, (p - H % p) % p))  # (B, 3, p*h, p*w)
        x = self.proj(x)  # (B, C, h, w)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return self.norm(x), h, w


class SwinTransformer(nn.Module):
    """Swin Transformer backbone (Section 3.3, Figure 2: pixel-level module, "backbone").

    x (B, 3, H, W) -> {"res2": (B, C, ceil(H/4), ceil(W/4)), "res3": (B, 2C, /8), "res4": (B, 4C, /16),
    "res5": (B, 8C, /32)}, C = embed_dim. Each output is the last block's output of a stage
    (before patch merging) through its own LayerNorm ``norm{i}``. No absolute position
    embedding; patch norm on; MLP ratio 4; qkv bias; stochastic depth rising linearly from 0 to
    drop_path_rate over all blocks.
    """

    def __init__(self, embed_dim: int, depths: list[int], num_heads: list[int], window_size: int,
                 drop_path_rate: float = 0.3, patch_size: int = 4):
        super().__init__()
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # one per block
        self.layers = nn.ModuleList()
        self.out_channels: dict[str, int] = {}
        for i, depth in enumerate(depths):
            dim = embed_dim * 2**i
            block_rates = rates[sum(depths[:i]):sum(depths[:i + 1])]
            self.layers.append(SwinStage(dim, depth, num_heads[i], window_size, block_rates,
                                         downsample=i < len(depths) - 1))
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
            self.out_channels[f"res{i + 2}"] = dim
        self.out_strides = dict(OUT_STRIDES)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Swin init: truncated normal (std .02) for Linear weights and the bias tables, zero biases,
        # LayerNorm 1 / 0; the patch-embedding conv keeps PyTorch's default (as official)
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, WindowAttention):
            nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_images(x, "SwinTransformer")
        B = x.shape[0]
        x, H, W = self.patch_embed(x)  # (B, H*W, C), H, W = ceil(input / 4)
        features = {}
        for i, stage in enumerate(self.layers):
            x = stage(x, H, W)  # (B, H*W, C_i)
            out = getattr(self, f"norm{i}")(x)  # (B, H*W, C_i)
            # (B, C_i, H, W) as a view in channels-last memory (no copy), the layout the pixel
            # decoder's convolutions run fastest on (see ResNet.forward)
            features[f"res{i + 2}"] = out.view(B, H, W, -1).permute(0, 3, 1, 2)  # (B, C_i, H, W)
            if stage.downsample is not None:
                x = stage.downsample(x, H, W)  # (B, ceil(H/2)*ceil(W/2), 2*C_i)
                H, W = (H + 1) // 2, (W + 1) // 2
        return features


# =============================================================================================
# Registry
# =============================================================================================

RESNETS = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}
# R101c (official R101c configs): ResNet-101 with the DeepLab stem and a res5 multi-grid (1, 2, 4)
RESNET_VARIANTS = {"resnet101c": ("resnet101", {"stem": "deeplab", "res5_dilations": [1, 2, 4]})}
SWINS = {  # MaskFormer's Swin configs (Swin-B/L: the ImageNet-22k, 384-pretrained window-12 models)
    "swin_tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "swin_small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7),
    "swin_base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12),
    "swin_large": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12),
}


def build_backbone(name: str, **kwargs) -> nn.Module:
    """Build a backbone by name (Section 3.3, Figure 2 "backbone").

    name: "resnet18", "resnet34", "resnet50", "resnet101", "resnet101c" (kwargs: norm="frozen_bn" |
    "bn", width=64) or "swin_tiny", "swin_small", "swin_base", "swin_large" (kwargs: drop_path_rate=0.3).
    The module maps (B, 3, H, W) to {"res2".."res5"} and has ``out_channels`` / ``out_strides``.
    """
    if name in RESNETS or name in RESNET_VARIANTS:
        family, allowed = "ResNet", {"norm", "width"}
    elif name in SWINS:
        family, allowed = "Swin", {"drop_path_rate"}
    else:
        raise ValueError(f"build_backbone: unknown name {name!r}; expected one of "
                         f"{[*RESNETS, *RESNET_VARIANTS, *SWINS]}")
    unknown = set(kwargs) - allowed
    if unknown:
        raise TypeError(f"build_backbone({name!r}): unexpected {family} option(s) {sorted(unknown)}; "
                        f"allowed: {sorted(allowed)}")
    if family == "ResNet":
        base, variant = RESNET_VARIANTS.get(name, (name, {}))
        block, layers = RESNETS[base]
        return ResNet(block, layers, **variant, **kwargs)
    return SwinTransformer(**SWINS[name], **kwargs)
