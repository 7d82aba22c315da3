"""MaskFormer: the model of Figure 2 (§3.3), plus the two per-pixel baselines of §4.

Paper: Cheng, Schwing, Kirillov, "Per-Pixel Classification is Not All You Need for Semantic
Segmentation" (NeurIPS 2021). Equation labels (3.1a)…(3.4b) are those of docs/paper.md.

What this file implements, box by box of Figure 2:

1. Pixel-level module: a backbone (backbones.py) maps the image to features res2…res5; the
   `PixelDecoder` (an FPN) upsamples them to per-pixel embeddings E_pixel (B, C_E, H/4, W/4).
   With `enc_layers` > 0 (the COCO-panoptic R50/R101 models) it first runs res5 through
   transformer encoder layers, the official TransformerEncoderPixelDecoder.
2. Transformer module: `TransformerModule`, a DETR decoder: N learned query positions attend to
   the lowest-resolution feature F (res5, or the pixel decoder's encoder output when
   enc_layers > 0) and give N per-segment embeddings Q.
3. Segmentation module (inside `MaskFormer`): a linear classifier gives p_i, Eq. (3.3a); the
   `MaskEmbeddingMLP` gives mask embeddings whose dot products with E_pixel are the mask logits, Eq. (3.3b).

`head` picks the formulation, the rest stays identical (as in the paper's comparison):
"mask_classification" (MaskFormer), "per_pixel" (PerPixelBaseline, Eq. (3.1a)) and
"per_pixel_plus" (PerPixelBaseline+).

Outputs are *logits*: the softmax of Eq. (3.3a) and the sigmoid of Eq. (3.3b) are applied by the
loss (losses.py) and inference (inference.py), which also upsample the stride-4 masks.

Reading order: MaskFormerConfig and CONFIGS → MaskFormer (forward shows the whole model) →
PixelDecoder → sine_position_encoding → MultiHeadAttention → FeedForward → TransformerEncoderLayer (used by the
PixelDecoder when enc_layers > 0) → TransformerDecoderLayer → TransformerModule → MaskEmbeddingMLP →
build_model. Params and FLOPs of every named config beside the paper's Table 1: `python -m tooling.flops`.

Names: Q, the decoder's per-segment embeddings, is `segment_embeddings` (DETR: `tgt`); the
flattened image feature F is `image_tokens` (DETR: `memory` in the decoder, `src` in the encoder).

How this differs from the official code (facebookresearch/MaskFormer), computations unchanged:
- `mask_features`, the last pixel-decoder conv, is 3x3 as in the official code; the paper says 1x1.
- Attention is written out batch-first with separate q/k/v projections; the official code uses
  nn.MultiheadAttention (sequence-first, one packed in_proj weight). Same math; the q/k/v weights
  are initialised as that packed matrix is, so the initial distribution matches too.
- No padding mask goes to the transformer layers (the official predictor and pixel-decoder encoder
  pass mask=None as well), so the sine position encoding is the same for every image: it is
  computed once per batch.
- The auxiliary ("deep supervision") predictions are computed only in training mode; the
  official code also computes them at inference and throws them away.
- PerPixelBaseline: the logits are returned at stride 4; the official head upsamples them ×4
  itself, here the loss (losses.per_pixel_loss) and inference do.
- PerPixelBaseline+: always K queries (one per class), whatever `num_queries` says (the official
  config sets NUM_OBJECT_QUERIES to K for it).
The Hugging Face port (transformers.MaskFormerForInstanceSegmentation, use_auxiliary_loss=False)
computes the same function; tooling/convert.py (a later step) maps its weights onto the names used here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import build_backbone

HEADS = ("mask_classification", "per_pixel", "per_pixel_plus")


@dataclass
class MaskFormerConfig:
    """Every size of the model. Defaults are the paper's ADE20K-150 recipe (docs/recipe.md)."""

    backbone: str  # a backbones.build_backbone name: "resnet50", "swin_tiny", …
    backbone_kwargs: dict = field(default_factory=dict)  # e.g. {"drop_path_rate": 0.3} for Swin
    head: str = "mask_classification"  # | "per_pixel" | "per_pixel_plus" (§4 baselines)
    num_classes: int = 150  # K
    num_queries: int = 100  # N (per_pixel_plus always uses K)
    conv_dim: int = 256  # pixel-decoder (FPN) width
    mask_dim: int = 256  # C_E, width of the per-pixel and mask embeddings
    hidden_dim: int = 256  # C_Q, transformer width
    num_heads: int = 8
    dim_feedforward: int = 2048
    dec_layers: int = 6
    # Transformer encoder layers on res5 inside the pixel decoder (official SEM_SEG_HEAD.
    # TRANSFORMER_ENC_LAYERS): 0 = the plain FPN (ADE20K, Swin), 6 for the COCO-panoptic R50/R101 models
    enc_layers: int = 0
    dropout: float = 0.1
    deep_supervision: bool = True  # auxiliary predictions from every decoder layer (§3.3)


_SWIN = {"drop_path_rate": 0.3}
CONFIGS: dict[str, MaskFormerConfig] = {
    "r50": MaskFormerConfig(backbone="resnet50"),
    "r101": MaskFormerConfig(backbone="resnet101"),
    "r101c": MaskFormerConfig(backbone="resnet101c"),  # R101c: DeepLab stem + res5 multi-grid (backbones.py)
    "swin_t": MaskFormerConfig(backbone="swin_tiny", backbone_kwargs=dict(_SWIN)),
    "swin_s": MaskFormerConfig(backbone="swin_small", backbone_kwargs=dict(_SWIN)),
    "swin_b": MaskFormerConfig(backbone="swin_base", backbone_kwargs=dict(_SWIN)),
    "swin_l": MaskFormerConfig(backbone="swin_large", backbone_kwargs=dict(_SWIN)),
    # Not in the paper: a model small enough to train from scratch on a laptop CPU (trainable
    # BatchNorm, since no ImageNet statistics are loaded into it).
    "tiny": MaskFormerConfig(
        backbone="resnet18", backbone_kwargs={"norm": "bn", "width": 32}, num_queries=20, conv_dim=64,
        mask_dim=64, hidden_dim=64, num_heads=4, dim_feedforward=256, dec_layers=2, dropout=0.0,
    ),
}


def resolve_config(config: MaskFormerConfig) -> MaskFormerConfig:
    """Check `config` and return the one the model really uses (per_pixel_plus: N = K queries)."""
    checks = [
        (config.head in HEADS, f"head must be one of {HEADS}, got {config.head!r}"),
        (isinstance(config.backbone_kwargs, dict), "backbone_kwargs must be a dict"),
        (config.num_classes >= 1 and config.num_queries >= 1, "num_classes and num_queries must be >= 1"),
        (config.conv_dim % 32 == 0, f"conv_dim must be a multiple of 32 (GroupNorm(32)), got {config.conv_dim}"),
        (config.hidden_dim % config.num_heads == 0,
         f"hidden_dim {config.hidden_dim} must be divisible by num_heads {config.num_heads}"),
        (config.hidden_dim % 4 == 0,
         f"hidden_dim must be a multiple of 4 (sine encoding: sin/cos pairs for x and y), got {config.hidden_dim}"),
        (config.dec_layers >= 1 and config.enc_layers >= 0, "need dec_layers >= 1 and enc_layers >= 0"),
        (config.enc_layers == 0 or config.conv_dim % config.num_heads == 0,
         f"conv_dim {config.conv_dim} must be divisible by num_heads {config.num_heads} (the pixel "
         f"decoder's encoder layers, enc_layers > 0, are conv_dim wide)"),
        (0.0 <= config.dropout < 1.0, f"dropout must be in [0, 1), got {config.dropout}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"MaskFormerConfig: {message}")
    config = replace(config, backbone_kwargs=dict(config.backbone_kwargs))
    if config.head == "per_pixel_plus":
        config = replace(config, num_queries=config.num_classes)
    return config


# ---------------------------------------------------------------------------------------------
# The whole model (Figure 2)
# ---------------------------------------------------------------------------------------------


class MaskFormer(nn.Module):
    """Figure 2: pixel-level module → transformer module → segmentation module (§3.3).

    `config.head` selects the classification formulation:
    - "mask_classification": N (class, mask) pairs, Eq. (3.2a) via Eq. (3.3a) and (3.3b).
    - "per_pixel": PerPixelBaseline, a 1x1 conv classifier on E_pixel, Eq. (3.1a).
    - "per_pixel_plus": PerPixelBaseline+, the transformer module with K queries and the mask
      embedding MLP; mask embedding k · E_pixel is the per-pixel logit of class k.
    """

    def __init__(self, config: MaskFormerConfig):
        super().__init__()
        config = resolve_config(config)
        self.config = config
        # 1. Pixel-level module: backbone + pixel decoder.
        self.backbone = build_backbone(config.backbone, **config.backbone_kwargs)
        channels = self.backbone.out_channels
        self.pixel_decoder = PixelDecoder(
            channels, config.conv_dim, config.mask_dim, config.enc_layers, config.num_heads,
            config.dim_feedforward, config.dropout,
        )
        if config.head == "per_pixel":
            # Eq. (3.1a): a K-way linear classifier on every pixel embedding (official: `predictor`).
            self.pixel_classifier = nn.Conv2d(config.mask_dim, config.num_classes, kernel_size=1)
            c2_msra_fill(self.pixel_classifier)
            return
        # 2. Transformer module. It reads F = res5, or the pixel decoder's encoder output (conv_dim wide).
        feature_channels = config.conv_dim if config.enc_layers > 0 else channels["res5"]
        self.transformer = TransformerModule(
            feature_channels, config.hidden_dim, config.num_heads, config.dim_feedforward,
            config.num_queries, config.dec_layers, config.dropout,
        )
        # 3. Segmentation module: class head (Eq. 3.3a) and mask-embedding MLP (Eq. 3.3b).
        if config.head == "mask_classification":
            self.class_head = nn.Linear(config.hidden_dim, config.num_classes + 1)  # +1: "no object" ∅
        self.mask_embed = MaskEmbeddingMLP(config.hidden_dim, config.hidden_dim, config.mask_dim, num_layers=3)

    def forward(self, images: Tensor) -> dict:
        """images (B, 3, H, W), normalised → dict of logits at stride 4 (h, w = ceil(H/4), ceil(W/4)).

        mask_classification: "pred_logits" (B, N, K + 1) and "pred_masks" (B, N, h, w); in training
        mode with deep supervision also "aux_outputs", one such dict per earlier decoder layer
        (earliest first). per_pixel and per_pixel_plus: "sem_seg_logits" (B, K, h, w); in training
        per_pixel_plus also has "aux_outputs" of {"sem_seg_logits"} (the official head supervises
        every decoder layer of the baseline too).
        """
        B, _, H, W = images.shape
        # Pixel-level module: E_pixel (B, C_E, H/4, W/4) and F (B, C_F, H/32, W/32), the image feature
        # of the transformer module (res5, or the pixel decoder's encoder output when enc_layers > 0)
        features = self.backbone(images)
        pixel_embeddings, image_features = self.pixel_decoder(features)
        if self.config.head == "per_pixel":
            # Eq. (3.1a), before the softmax: K logits for every pixel
            return {"sem_seg_logits": self.pixel_classifier(pixel_embeddings)}  # (B, K, H/4, W/4)

        # Transformer module: one (B, N, C_Q) set of segment embeddings per decoder layer
        segment_embeddings = self.transformer(image_features)  # (L, B, N, C_Q): Q of every layer
        deep_supervision = self.training and self.config.deep_supervision
        if not deep_supervision:
            segment_embeddings = segment_embeddings[-1:]  # (1, B, N, C_Q): only the last layer predicts
        # Segmentation module, shared by all layers (deep supervision, §3.3)
        predictions = [self.segment(layer_q, pixel_embeddings) for layer_q in segment_embeddings]
        outputs = predictions[-1]
        if deep_supervision:
            outputs["aux_outputs"] = predictions[:-1]  # earliest layer first
        return outputs

    def segment(self, segment_embeddings: Tensor, pixel_embeddings: Tensor) -> dict[str, Tensor]:
        """Segmentation module: Q (B, N, C_Q), E_pixel (B, C_E, h, w) → class and mask logits."""
        mask_embeddings = self.mask_embed(segment_embeddings)  # (B, N, C_E)
        # Eq. (3.3b), before the sigmoid: m_i[h, w] = E_mask[:, i]ᵀ · E_pixel[:, h, w]
        masks = torch.einsum("bqc,bchw->bqhw", mask_embeddings, pixel_embeddings)  # (B, N, h, w)
        if self.config.head == "per_pixel_plus":
            return {"sem_seg_logits": masks}  # N = K: query k's mask is class k's per-pixel logit
        # Eq. (3.3a), before the softmax over K + 1 classes
        class_logits = self.class_head(segment_embeddings)  # (B, N, K + 1)
        return {"pred_logits": class_logits, "pred_masks": masks}


# ---------------------------------------------------------------------------------------------
# 1. Pixel-level module: the pixel decoder (the backbone lives in backbones.py)
# ---------------------------------------------------------------------------------------------


def c2_xavier_fill(conv: nn.Conv2d | nn.Linear) -> None:
    """detectron2's "c2_xavier_fill" (Caffe2's Xavier): Kaiming-uniform with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def c2_msra_fill(conv: nn.Conv2d) -> None:
    """detectron2's "c2_msra_fill": Kaiming-normal (fan_out, ReLU gain), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ConvNorm(nn.Module):
    """§3.3 pixel decoder block: conv (no bias) → GroupNorm(32) → optional ReLU (official: detectron2 Conv2d)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(32, out_channels)
        self.relu = relu
        c2_xavier_fill(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        x = self.norm(self.conv(x))  # (B, out_channels, H, W)
        return F.relu(x) if self.relu else x


class PixelDecoder(nn.Module):
    """§3.3 pixel decoder (Figure 2): FPN from res5 down to res2 → E_pixel at stride 4.

    enc_layers == 0 (every ADE20K model, all Swins): the official "BasePixelDecoder". res5 → 3x3
    conv; then for res4, res3, res2 a 1x1 lateral conv, plus the nearest-upsampled map from above,
    then a 3x3 conv; all with GroupNorm(32) (and ReLU after the 3x3s). A last 3x3 conv with bias,
    `mask_features`, gives C_E = mask_dim channels (the paper says 1x1, the code uses 3x3).

    enc_layers > 0 (the COCO-panoptic R50/R101 models, 6 layers): the official
    "TransformerEncoderPixelDecoder", which the paper does not describe. Before the FPN, res5 goes
    through a 1x1 conv with bias to conv_dim (`input_proj`) and `enc_layers` DETR post-norm
    encoder layers (`encoder_layers`, conv_dim wide, sine position encoding on q and k, no final
    LayerNorm). Their output replaces res5 twice: as the FPN's top input (its 3x3 conv then reads
    conv_dim channels) and as F, the image feature the transformer module attends to (official:
    TRANSFORMER_IN_FEATURE "transformer_encoder").

    forward returns both: (E_pixel, F), with F = res5 itself when enc_layers == 0.
    """

    def __init__(self, in_channels: dict[str, int], conv_dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 0, num_heads: int = 8, dim_feedforward: int = 2048, dropout: float = 0.1):
        super().__init__()
        top_channels = in_channels["res5"]  # what the FPN's top 3x3 conv reads
        if enc_layers > 0:
            self.input_proj = nn.Conv2d(in_channels["res5"], conv_dim, kernel_size=1)
            c2_xavier_fill(self.input_proj)
            top_channels = conv_dim
        self.encoder_layers = nn.ModuleList(
            TransformerEncoderLayer(conv_dim, num_heads, dim_feedforward, dropout) for _ in range(enc_layers)
        )
        self.lateral_convs = nn.ModuleDict(
            {name: ConvNorm(in_channels[name], conv_dim, 1, relu=False) for name in ("res4", "res3", "res2")}
        )
        self.output_convs = nn.ModuleDict(
            {"res5": ConvNorm(top_channels, conv_dim, 3, relu=True)}
            | {name: ConvNorm(conv_dim, conv_dim, 3, relu=True) for name in ("res4", "res3", "res2")}
        )
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """features {"res2": (B, C2, H/4, W/4), …, "res5": (B, C5, H/32, W/32)} →
        (E_pixel (B, C_E, H/4, W/4), F (B, C_F, H/32, W/32)); C_F = conv_dim if enc_layers > 0 else C5."""
        B, _, H4, W4 = features["res2"].shape
        image_features = features["res5"]  # (B, C5, H/32, W/32)
        if len(self.encoder_layers) > 0:
            image_features = self.encode(image_features)  # (B, conv_dim, H/32, W/32)
        y = self.output_convs["res5"](image_features)  # (B, conv_dim, H/32, W/32)
        for name in ("res4", "res3", "res2"):  # top-down: strides 16, 8, 4
            lateral = self.lateral_convs[name](features[name])  # (B, conv_dim, h, w)
            y = lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest")  # (B, conv_dim, h, w)
            y = self.output_convs[name](y)  # (B, conv_dim, h, w)
        return self.mask_features(y), image_features  # (B, C_E, H/4, W/4), (B, C_F, H/32, W/32)

    def encode(self, res5: Tensor) -> Tensor:
        """TransformerEncoderPixelDecoder only: res5 (B, C5, h, w) → (B, conv_dim, h, w), after every
        res5 position has attended to all the others in each of the enc_layers encoder layers."""
        x = self.input_proj(res5)  # (B, C, h, w), C = conv_dim
        B, C, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, hw, C): one token per res5 pixel
        pos = sine_position_tokens(h, w, C, x)  # (hw, C), the same for every image (no padding mask)
        for layer in self.encoder_layers:
            tokens = layer(tokens, pos)  # (B, hw, C)
        return tokens.transpose(1, 2).reshape(B, C, h, w)  # (B, C, h, w)


# ---------------------------------------------------------------------------------------------
# 2. Transformer module (a DETR decoder)
# ---------------------------------------------------------------------------------------------


def sine_position_encoding(
    height: int, width: int, num_pos_feats: int, temperature: float = 10000.0,
    scale: float = 2 * math.pi, device: torch.device | None = None,
) -> Tensor:
    """DETR's normalised sine encoding of a (height, width) grid → (2 * num_pos_feats, height, width).

    The first num_pos_feats channels encode the row, the last num_pos_feats the column. A
    coordinate, numbered from 1 and scaled so the last row/column is at `scale` (2π), gives
    channel pair (2i, 2i + 1) = (sin, cos)(coord / temperature^(2i / num_pos_feats)).
    Computed in float32, like the official code, whatever dtype the model runs in.
    """
    eps = 1e-6  # as the official code
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)  # (height,)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)  # (width,)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)  # (F,)
    pos_y = y[:, None] / dim_t  # (height, F)
    pos_x = x[:, None] / dim_t  # (width, F)
    # sin on even channels, cos on odd ones, interleaved: (sin f0, cos f0, sin f1, cos f1, …)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).flatten(1)  # (height, F)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).flatten(1)  # (width, F)
    pos = torch.cat(
        (pos_y[:, None, :].expand(height, width, num_pos_feats),
         pos_x[None, :, :].expand(height, width, num_pos_feats)), dim=2,
    )  # (height, width, 2F)
    return pos.permute(2, 0, 1)  # (2F, height, width)


def sine_position_tokens(height: int, width: int, dim: int, like: Tensor) -> Tensor:
    """sine_position_encoding of a (height, width) map as one row per token → (height·width, dim),
    on `like`'s device and in its dtype (what the encoder and decoder layers add to their tokens)."""
    pos = sine_position_encoding(height, width, dim // 2, device=like.device).to(like.dtype)  # (dim, h, w)
    return pos.flatten(1).transpose(0, 1)  # (hw, dim): token t = row t // width, column t % width


class MultiHeadAttention(nn.Module):
    """Multi-head attention ("Attention Is All You Need" §3.2.2), written out.

    Project queries, keys and values, split the C channels into `num_heads` heads of C / heads,
    compute softmax(Q Kᵀ / sqrt(d)) V per head (F.scaled_dot_product_attention, the fused
    kernel), join the heads and project back.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout  # on the attention probabilities, training only
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the official nn.MultiheadAttention + DETR's Xavier pass: Xavier-uniform on the
        q/k/v weights taken together as one packed (3C, C) matrix and on out_proj; zero biases."""
        dim = self.q_proj.weight.shape[0]
        packed = nn.init.xavier_uniform_(torch.empty(3 * dim, dim, device=self.q_proj.weight.device))
        with torch.no_grad():
            for proj, weight in zip((self.q_proj, self.k_proj, self.v_proj), packed.chunk(3)):
                proj.weight.copy_(weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.zeros_(proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """query (B, Lq, C), key/value (B, Lk, C) → (B, Lq, C). No attention mask: MaskFormer uses none.
        need_weights=True: also the attention weights (B, heads, Lq, Lk), each row summing to 1
        (the decoder's cross-attention maps of notebook 08), computed without the fused kernel."""
        B, Lq, C = query.shape
        Lk = key.shape[1]
        heads, d = self.num_heads, C // self.num_heads
        q = self.q_proj(query).view(B, Lq, heads, d).transpose(1, 2)  # (B, heads, Lq, C/heads)
        k = self.k_proj(key).view(B, Lk, heads, d).transpose(1, 2)  # (B, heads, Lk, C/heads)
        v = self.v_proj(value).view(B, Lk, heads, d).transpose(1, 2)  # (B, heads, Lk, C/heads)
        # softmax(Q Kᵀ / sqrt(C/heads)) V, each head on its own
        dropout = self.dropout if self.training else 0.0
        if need_weights:  # the same formula written out, keeping the weights
            weights = (q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1)  # (B, heads, Lq, Lk)
            out = F.dropout(weights, dropout) @ v  # (B, heads, Lq, C/heads)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, heads, Lq, C/heads)
        out = self.out_proj(out.transpose(1, 2).reshape(B, Lq, C))  # (B, Lq, C): heads side by side
        return (out, weights) if need_weights else out


class FeedForward(nn.Module):
    """§3.3 transformer module, each layer's position-wise MLP: Linear → ReLU → dropout → Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.linear1.weight)  # DETR: Xavier on every weight with dim > 1;
        nn.init.xavier_uniform_(self.linear2.weight)  # biases keep nn.Linear's default init

    def forward(self, x: Tensor) -> Tensor:
        """x (B, L, C) → (B, L, C), through a hidden width of dim_feedforward."""
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class TransformerEncoderLayer(nn.Module):
    """DETR post-norm encoder layer: self-attention over the image tokens (sine position on q and k),
    then the MLP; residual + dropout + LayerNorm after each. Used inside the PixelDecoder when
    enc_layers > 0 (6 layers in the COCO-panoptic R50/R101 models, none in the ADE20K ones)."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, image_tokens: Tensor, pos: Tensor) -> Tensor:
        """image_tokens (B, HW, C), pos (HW, C) sine encoding → (B, HW, C)."""
        x = image_tokens
        q = k = x + pos  # position on queries and keys, not on values
        x = self.self_attn_norm(x + self.dropout(self.self_attn(q, k, x)))  # (B, HW, C)
        return self.ffn_norm(x + self.dropout(self.ffn(x)))  # (B, HW, C)


class TransformerDecoderLayer(nn.Module):
    """DETR post-norm decoder layer: self-attention among the N queries, cross-attention from the
    queries to the image tokens, then the MLP; residual + dropout + LayerNorm after each."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.self_attn_norm = nn.LayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.cross_attn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, dim_feedforward, dropout)
        self.ffn_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, segment_embeddings: Tensor, image_tokens: Tensor, query_pos: Tensor, pos: Tensor) -> Tensor:
        """segment_embeddings (B, N, C), the running Q; image_tokens (B, HW, C), F flattened;
        query_pos (N, C), the learned queries; pos (HW, C), the sine encoding → the next Q (B, N, C)."""
        x = segment_embeddings
        # Self-attention: the query position goes on queries and keys (not values)
        q = k = x + query_pos
        x = self.self_attn_norm(x + self.dropout(self.self_attn(q, k, x)))  # (B, N, C)
        # Cross-attention: query position on the queries, sine position on the image keys
        attended = self.cross_attn(x + query_pos, image_tokens + pos, image_tokens)  # (B, N, C)
        x = self.cross_attn_norm(x + self.dropout(attended))  # (B, N, C)
        return self.ffn_norm(x + self.dropout(self.ffn(x)))  # (B, N, C)


class TransformerModule(nn.Module):
    """§3.3 transformer module (Figure 2): N queries attend to F → N segment embeddings Q.

    F is res5, or with enc_layers > 0 the pixel decoder's encoder output (conv_dim wide). It goes
    through a 1x1 projection to hidden_dim when its width differs (official: `input_proj`; so none
    for the COCO-panoptic R50/R101 models, where conv_dim = hidden_dim = 256). The decoder's
    targets start at zero; what distinguishes the N queries is the learned query position
    `query_pos` (official: `query_embed`), added in every layer. A final LayerNorm (shared) is
    applied to every layer's output, as DETR's return_intermediate does for deep supervision.
    The official predictor could also run its own encoder layers on F (MASK_FORMER.ENC_LAYERS);
    every official config sets that to 0, so this module has none.
    """

    def __init__(self, in_channels: int, hidden_dim: int, num_heads: int, dim_feedforward: int,
                 num_queries: int, dec_layers: int, dropout: float):
        super().__init__()
        if in_channels != hidden_dim:
            self.input_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
            c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        self.query_pos = nn.Embedding(num_queries, hidden_dim)  # default N(0, 1) init, as official
        self.decoder_layers = nn.ModuleList(
            TransformerDecoderLayer(hidden_dim, num_heads, dim_feedforward, dropout) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

    def forward(self, image_features: Tensor) -> Tensor:
        """image_features F (B, C_F, h, w) → Q of every decoder layer, (L, B, N, C), after the final LayerNorm."""
        x = self.input_proj(image_features)  # (B, C, h, w)
        B, C, h, w = x.shape
        image_tokens = x.flatten(2).transpose(1, 2)  # (B, hw, C): one token per pixel of F
        pos = sine_position_tokens(h, w, C, x)  # (hw, C), the same for every image
        query_pos = self.query_pos.weight  # (N, C)
        segment_embeddings = image_tokens.new_zeros(B, *query_pos.shape)  # (B, N, C): Q starts at zero
        outputs = []
        for layer in self.decoder_layers:
            segment_embeddings = layer(segment_embeddings, image_tokens, query_pos, pos)  # (B, N, C)
            # the next layer gets the un-normalised Q, not the normalised copy
            outputs.append(self.decoder_norm(segment_embeddings))
        return torch.stack(outputs)  # (L, B, N, C)


# ---------------------------------------------------------------------------------------------
# 3. Segmentation module: the mask-embedding MLP (the class head is one nn.Linear)
# ---------------------------------------------------------------------------------------------


class MaskEmbeddingMLP(nn.Module):
    """§3.3 mask-embedding MLP for Eq. (3.3b), "2 hidden layers": Linear → ReLU → Linear → ReLU → Linear."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_dim) → (..., out_dim): Q (B, N, C_Q) → E_mask (B, N, C_E) in MaskFormer."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


# ---------------------------------------------------------------------------------------------
# Building and measuring
# ---------------------------------------------------------------------------------------------


def build_model(name: str, num_classes: int = 150, **overrides) -> MaskFormer:
    """A named config (CONFIGS) with `num_classes` and any config fields overridden.

    `backbone_kwargs` overrides are merged into the named config's (so build_model("tiny",
    backbone_kwargs={"width": 16}) keeps its trainable BatchNorm).
    """
    if name not in CONFIGS:
        raise ValueError(f"build_model: unknown config name {name!r}; valid names: {', '.join(CONFIGS)}")
    valid = [f.name for f in fields(MaskFormerConfig)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"build_model: unknown config field(s) {unknown}; valid fields: {', '.join(valid)}")
    base = CONFIGS[name]
    if "backbone_kwargs" in overrides:
        overrides["backbone_kwargs"] = {**base.backbone_kwargs, **overrides["backbone_kwargs"]}
    return MaskFormer(replace(base, num_classes=num_classes, **overrides))


# Table 1 of the paper (ADE20K-150): crop size, params (M), FLOPs (G multiply-adds); the exact
# parameter counts of the Hugging Face port with 150 classes (docs/recipe.md) beside them.

