"""Load published weights into our MaskFormer: the Hugging Face port, the official detectron2
checkpoints, and ImageNet backbones (torchvision ResNet, Microsoft Swin).

The command that writes a converted checkpoint is `python -m tooling.convert` (tooling/convert.py).

Why a from-scratch implementation needs this file: a trained checkpoint is a fixed function. When
its tensors, renamed onto our parameters, load with `strict=True` (none left over, none missing,
every shape equal) AND our forward pass then reproduces the reference model's outputs to float
precision, our code computes the same function as the reference: the same layers in the same
order, the same paddings, norms, attention scaling, sine position encoding and shifted-window
masks. tests/test_convert.py does exactly that against `transformers`'
MaskFormerForInstanceSegmentation (built offline with random weights): a wrong detail of Figure 2
shows up as a number, not as an opinion. The published models can then be evaluated and
fine-tuned here without retraining them (infer.py --eval, train.py --weights).

The rule tables below are the reading material: per source, an ordered list of (regex,
replacement) pairs. A source tensor name must match one pattern in full (the first match wins) and
the replacement, with \\1-style groups, is our name. A name that no rule matches is an error,
unless the source's IGNORED table lists it with the reason it is not needed. Only a few tensors
need more than a new name; small named transforms run before the renaming:
- `split_in_proj`: the official encoder and decoder layers use nn.MultiheadAttention, which packs
  the query, key and value projections into one (3C, C) `in_proj_weight`; ours
  (maskformer.MultiHeadAttention) keeps q_proj / k_proj / v_proj, so the packed matrix is cut in
  three (rows q, then k, then v).
- `merge_hf_qkv`: the Hugging Face Swin splits Microsoft's packed `attn.qkv` into query / key /
  value; ours keeps Microsoft's packed layout, so the three are stacked back.
- `check_relative_position_index`: every Swin checkpoint stores the (N, N) index into the relative
  position bias table. It is a constant of the window size, so instead of copying it we compare it
  with ours (backbones.relative_position_index) and keep ours: a wrong index would fail here
  rather than be silently overwritten by the checkpoint's.
detectron2's FrozenBatchNorm stores its four tensors under a conv's `norm.` (`res2.0.conv1.norm.
running_var`); torchvision and ours keep them in `bn1`, `downsample.1`: a renaming only.

Measured (tests/test_convert.py, eval mode, one 333 x 517 image, random weights): against the
Hugging Face port, max |Δ| ≈ 3e-6 on the class logits and ≈ 3e-5 on mask logits of magnitude up to
~20, for Swin-T and ResNet-50 with 150 classes (HF's trainable BatchNorm, in eval mode, against our
FrozenBatchNorm with the same statistics). The official COCO-panoptic R50/R101 models
(TransformerEncoderPixelDecoder: encoder layers on res5 inside the pixel decoder) convert too,
onto maskformer.py's `enc_layers`; the Hugging Face port has no such pixel decoder.

Reading order: HF_RULES → DETECTRON2_RULES → TORCHVISION_RULES / SWIN_IMAGENET_RULES → the
transforms → `convert_state_dict` (the machinery) → the public functions → `load_hf_folder` →
`convert_file`. Reading the files themselves (`RestrictedUnpickler`,
`read_safetensors`) and the configs they describe (`hf_config_to_ours`, `config_from_state_dict`)
is machinery/weight_files.py's part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import backbones
import maskformer
from machinery import weight_files
from machinery.weight_files import ConversionError  # raised here and by the readers

Rules = list[tuple[str, str]]  # (regex matching a whole source name, our name with \1-style groups)
Ignored = list[tuple[str, str]]  # (regex matching a whole source name, why it is not needed)

WB = r"(weight|bias)"
BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"  # BatchNorm2d (and FrozenBN) tensors
HF_RES = ("res4", "res3", "res2")  # the HF FPN numbers its lateral layers top-down: layers.0 reads res4

# ---------------------------------------------------------------------------------------------
# Hugging Face port (transformers.MaskFormerForInstanceSegmentation) → ours.
# Published checkpoints were saved by transformers 4.x (decoder `out_proj`, `layers.N.fc1`);
# transformers 5.x names them `o_proj`, `layers.N.mlp.fc1`: both are accepted.
# ---------------------------------------------------------------------------------------------
HF_SWIN = r"model\.pixel_level_module\.encoder\.model\."  # MaskFormerSwinModel inside the backbone
HF_BLOCK = HF_SWIN + r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."  # Swin block j of stage i
HF_RESNET = r"model\.pixel_level_module\.encoder\."  # ResNetBackbone
HF_FPN = r"model\.pixel_level_module\.decoder\."  # MaskFormerPixelDecoder
HF_LAYER = r"model\.transformer_module\.decoder\.layers\.(\d+)\."  # DETR decoder layer i

HF_RULES: Rules = [
    # Swin backbone → Microsoft's names (backbones.SwinTransformer)
    (HF_SWIN + r"embeddings\.patch_embeddings\.projection\." + WB, r"backbone.patch_embed.proj.\1"),
    (HF_SWIN + r"embeddings\.norm\." + WB, r"backbone.patch_embed.norm.\1"),
    (HF_BLOCK + r"layernorm_before\." + WB, r"backbone.layers.\1.blocks.\2.norm1.\3"),
    (HF_BLOCK + r"attention\.self\.qkv\." + WB, r"backbone.layers.\1.blocks.\2.attn.qkv.\3"),  # merge_hf_qkv
    (HF_BLOCK + r"attention\.self\.(relative_position_bias_table|relative_position_index)",
     r"backbone.layers.\1.blocks.\2.attn.\3"),
    (HF_BLOCK + r"attention\.output\.dense\." + WB, r"backbone.layers.\1.blocks.\2.attn.proj.\3"),
    (HF_BLOCK + r"layernorm_after\." + WB, r"backbone.layers.\1.blocks.\2.norm2.\3"),
    (HF_BLOCK + r"intermediate\.dense\." + WB, r"backbone.layers.\1.blocks.\2.mlp.fc1.\3"),
    (HF_BLOCK + r"output\.dense\." + WB, r"backbone.layers.\1.blocks.\2.mlp.fc2.\3"),
    (HF_SWIN + r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\." + WB, r"backbone.layers.\1.downsample.\2.\3"),
    (r"model\.pixel_level_module\.encoder\.hidden_states_norms\.(\d+)\." + WB, r"backbone.norm\1.\2"),
    # ResNet backbone → torchvision's names (backbones.ResNet); HF stage s is our layer{s+1}
    (HF_RESNET + r"embedder\.embedder\.convolution\.weight", "backbone.conv1.weight"),
    (HF_RESNET + r"embedder\.embedder\.normalization\." + BN, r"backbone.bn1.\1"),
    *[(HF_RESNET + rf"encoder\.stages\.{s}\.layers\.(\d+)\.layer\.{k}\.convolution\.weight",
       rf"backbone.layer{s + 1}.\1.conv{k + 1}.weight") for s in range(4) for k in range(3)],
    *[(HF_RESNET + rf"encoder\.stages\.{s}\.layers\.(\d+)\.layer\.{k}\.normalization\." + BN,
       rf"backbone.layer{s + 1}.\1.bn{k + 1}.\2") for s in range(4) for k in range(3)],
    *[(HF_RESNET + rf"encoder\.stages\.{s}\.layers\.(\d+)\.shortcut\.convolution\.weight",
       rf"backbone.layer{s + 1}.\1.downsample.0.weight") for s in range(4)],
    *[(HF_RESNET + rf"encoder\.stages\.{s}\.layers\.(\d+)\.shortcut\.normalization\." + BN,
       rf"backbone.layer{s + 1}.\1.downsample.1.\2") for s in range(4)],
    # pixel decoder (FPN): "stem" reads res5; layers.0/1/2 add the res4/res3/res2 laterals
    (HF_FPN + r"fpn\.stem\.0\.weight", "pixel_decoder.output_convs.res5.conv.weight"),
    (HF_FPN + r"fpn\.stem\.1\." + WB, r"pixel_decoder.output_convs.res5.norm.\1"),
    *[(HF_FPN + rf"fpn\.layers\.{t}\.proj\.0\.weight", f"pixel_decoder.lateral_convs.{res}.conv.weight")
      for t, res in enumerate(HF_RES)],
    *[(HF_FPN + rf"fpn\.layers\.{t}\.proj\.1\." + WB, rf"pixel_decoder.lateral_convs.{res}.norm.\1")
      for t, res in enumerate(HF_RES)],
    *[(HF_FPN + rf"fpn\.layers\.{t}\.block\.0\.weight", f"pixel_decoder.output_convs.{res}.conv.weight")
      for t, res in enumerate(HF_RES)],
    *[(HF_FPN + rf"fpn\.layers\.{t}\.block\.1\." + WB, rf"pixel_decoder.output_convs.{res}.norm.\1")
      for t, res in enumerate(HF_RES)],
    (HF_FPN + r"mask_projection\." + WB, r"pixel_decoder.mask_features.\1"),
    # transformer module (DETR decoder)
    (r"model\.transformer_module\.input_projection\." + WB, r"transformer.input_proj.\1"),
    (r"model\.transformer_module\.queries_embedder\.weight", "transformer.query_pos.weight"),
    (HF_LAYER + r"self_attn\.(q|k|v)_proj\." + WB, r"transformer.decoder_layers.\1.self_attn.\2_proj.\3"),
    (HF_LAYER + r"self_attn\.(?:o|out)_proj\." + WB, r"transformer.decoder_layers.\1.self_attn.out_proj.\2"),
    (HF_LAYER + r"self_attn_layer_norm\." + WB, r"transformer.decoder_layers.\1.self_attn_norm.\2"),
    (HF_LAYER + r"encoder_attn\.(q|k|v)_proj\." + WB, r"transformer.decoder_layers.\1.cross_attn.\2_proj.\3"),
    (HF_LAYER + r"encoder_attn\.(?:o|out)_proj\." + WB, r"transformer.decoder_layers.\1.cross_attn.out_proj.\2"),
    (HF_LAYER + r"encoder_attn_layer_norm\." + WB, r"transformer.decoder_layers.\1.cross_attn_norm.\2"),
    (HF_LAYER + r"(?:mlp\.)?fc1\." + WB, r"transformer.decoder_layers.\1.ffn.linear1.\2"),
    (HF_LAYER + r"(?:mlp\.)?fc2\." + WB, r"transformer.decoder_layers.\1.ffn.linear2.\2"),
    (HF_LAYER + r"final_layer_norm\." + WB, r"transformer.decoder_layers.\1.ffn_norm.\2"),
    (r"model\.transformer_module\.decoder\.layernorm\." + WB, r"transformer.decoder_norm.\1"),
    # segmentation module: class head (Eq. 3.3a) and mask-embedding MLP (Eq. 3.3b)
    (r"class_predictor\." + WB, r"class_head.\1"),
    (r"mask_embedder\.(\d+)\.0\." + WB, r"mask_embed.layers.\1.\2"),
]
HF_IGNORED: Ignored = [
    (r"criterion\.empty_weight", "the loss's class weights (1 per class, 0.1 for no-object): losses.py's "
                                 "no_object_weight, not a model weight"),
    (HF_SWIN + r"layernorm\." + WB, "HF's Swin LayerNorm after stage 4, which MaskFormer never uses: it reads "
                                    "the four stage outputs through hidden_states_norms (our norm0..norm3)"),
]

# ---------------------------------------------------------------------------------------------
# Official detectron2 checkpoints (facebookresearch/MaskFormer model_final_*.pkl) → ours.
# Released files predate the head's "version 2" and lack `pixel_decoder.` (sem_seg_head.adapter_1);
# the current code saves sem_seg_head.pixel_decoder.adapter_1: both are accepted.
# ---------------------------------------------------------------------------------------------
D2_DECODER = r"sem_seg_head\.(?:pixel_decoder\.)?"  # BasePixelDecoder: adapter_n / layer_n read res{n+1}
D2_ENC = D2_DECODER + r"transformer\.encoder\.layers\.(\d+)\."  # TransformerEncoderPixelDecoder's layer i
D2_PREDICTOR = r"sem_seg_head\.predictor\."  # TransformerPredictor
D2_DEC = D2_PREDICTOR + r"transformer\.decoder\.layers\.(\d+)\."

D2_RESNET_RULES: Rules = [
    # ResNet: detectron2 names res2..res5 and keeps each FrozenBN under its conv's `norm.`
    # the stem: conv1 (basic, 7x7), or conv1..conv3 (R101c's DeepLab stem, three 3x3)
    (r"backbone\.stem\.conv([123])\.weight", r"backbone.conv\1.weight"),
    (r"backbone\.stem\.conv([123])\.norm\." + BN, r"backbone.bn\1.\2"),
    *[(rf"backbone\.res{s + 2}\.(\d+)\.conv(\d)\.weight", rf"backbone.layer{s + 1}.\1.conv\2.weight")
      for s in range(4)],
    *[(rf"backbone\.res{s + 2}\.(\d+)\.conv(\d)\.norm\." + BN, rf"backbone.layer{s + 1}.\1.bn\2.\3")
      for s in range(4)],
    *[(rf"backbone\.res{s + 2}\.(\d+)\.shortcut\.weight", rf"backbone.layer{s + 1}.\1.downsample.0.weight")
      for s in range(4)],
    *[(rf"backbone\.res{s + 2}\.(\d+)\.shortcut\.norm\." + BN, rf"backbone.layer{s + 1}.\1.downsample.1.\2")
      for s in range(4)],
]
DETECTRON2_RULES: Rules = [
    *D2_RESNET_RULES,
    # Swin (D2SwinTransformer): Microsoft's names, ours too
    (r"backbone\.((?:patch_embed|layers\.\d+|norm\d)\..+)", r"backbone.\1"),
    # pixel decoder (BasePixelDecoder): adapter_n = lateral 1x1 of res{n+1}, layer_n = its 3x3
    # (layer_4 reads res5, or conv_dim channels, the encoder output, in TransformerEncoderPixelDecoder)
    *[(D2_DECODER + rf"adapter_{n}\.weight", f"pixel_decoder.lateral_convs.res{n + 1}.conv.weight")
      for n in (1, 2, 3)],
    *[(D2_DECODER + rf"adapter_{n}\.norm\." + WB, rf"pixel_decoder.lateral_convs.res{n + 1}.norm.\1")
      for n in (1, 2, 3)],
    *[(D2_DECODER + rf"layer_{n}\.weight", f"pixel_decoder.output_convs.res{n + 1}.conv.weight")
      for n in (1, 2, 3, 4)],
    *[(D2_DECODER + rf"layer_{n}\.norm\." + WB, rf"pixel_decoder.output_convs.res{n + 1}.norm.\1")
      for n in (1, 2, 3, 4)],
    (D2_DECODER + r"mask_features\." + WB, r"pixel_decoder.mask_features.\1"),
    # TransformerEncoderPixelDecoder (COCO-panoptic R50/R101): 1x1 input_proj on res5, then the
    # encoder layers of its TransformerEncoderOnly (q/k/v come from split_in_proj)
    (D2_DECODER + r"input_proj\." + WB, r"pixel_decoder.input_proj.\1"),
    (D2_ENC + r"self_attn\.(q|k|v|out)_proj\." + WB, r"pixel_decoder.encoder_layers.\1.self_attn.\2_proj.\3"),
    (D2_ENC + r"norm1\." + WB, r"pixel_decoder.encoder_layers.\1.self_attn_norm.\2"),
    (D2_ENC + r"linear(1|2)\." + WB, r"pixel_decoder.encoder_layers.\1.ffn.linear\2.\3"),
    (D2_ENC + r"norm2\." + WB, r"pixel_decoder.encoder_layers.\1.ffn_norm.\2"),
    # transformer module (q/k/v come from split_in_proj). The predictor's own encoder
    # (MASK_FORMER.ENC_LAYERS) is 0 layers in every official config: no rule, so such tensors are errors.
    (D2_PREDICTOR + r"input_proj\." + WB, r"transformer.input_proj.\1"),
    (D2_PREDICTOR + r"query_embed\.weight", "transformer.query_pos.weight"),
    (D2_DEC + r"self_attn\.(q|k|v|out)_proj\." + WB, r"transformer.decoder_layers.\1.self_attn.\2_proj.\3"),
    (D2_DEC + r"norm1\." + WB, r"transformer.decoder_layers.\1.self_attn_norm.\2"),
    (D2_DEC + r"multihead_attn\.(q|k|v|out)_proj\." + WB, r"transformer.decoder_layers.\1.cross_attn.\2_proj.\3"),
    (D2_DEC + r"norm2\." + WB, r"transformer.decoder_layers.\1.cross_attn_norm.\2"),
    (D2_DEC + r"linear(1|2)\." + WB, r"transformer.decoder_layers.\1.ffn.linear\2.\3"),
    (D2_DEC + r"norm3\." + WB, r"transformer.decoder_layers.\1.ffn_norm.\2"),
    (D2_PREDICTOR + r"transformer\.decoder\.norm\." + WB, r"transformer.decoder_norm.\1"),
    # segmentation module
    (D2_PREDICTOR + r"class_embed\." + WB, r"class_head.\1"),
    (D2_PREDICTOR + r"mask_embed\.layers\.(\d+)\." + WB, r"mask_embed.layers.\1.\2"),
    # PerPixelBaseline (§4): its predictor is a single 1x1 conv classifier
    (D2_PREDICTOR + WB, r"pixel_classifier.\1"),
]
DETECTRON2_IGNORED: Ignored = [
    (r"criterion\.empty_weight", "the loss's class weights (1 per class, 0.1 for no-object): losses.py's "
                                 "no_object_weight, not a model weight"),
]

# ---------------------------------------------------------------------------------------------
# ImageNet backbones → our `model.backbone` (prefixed "backbone.", loaded with strict=False)
# ---------------------------------------------------------------------------------------------
TORCHVISION_RULES: Rules = [
    (r"((?:conv1|bn1|layer[1-4])\..+)", r"backbone.\1"),  # backbones.ResNet uses torchvision's names
]
TORCHVISION_IGNORED: Ignored = [
    (r"fc\." + WB, "the 1000-way ImageNet classifier; MaskFormer has its own heads"),
]
# detectron2's ImageNet pickles (ImageNetPretrained/torchvision/R-50.pkl, DeepLab/R-103.pkl for R101c):
# the names of tools/convert-torchvision-to-d2.py (stem.conv1, res2.0.conv1.norm, ...), without the
# model's "backbone." prefix, which `add_backbone_prefix` puts back; then the ResNet rules above.
D2_IMAGENET_IGNORED: Ignored = [
    (r"backbone\.(?:stem\.)?(?:fc|linear)\." + WB, "the ImageNet classifier (convert-torchvision-to-d2.py files it "
                                                 "under stem.fc); MaskFormer has its own heads"),
]
SWIN_IMAGENET_RULES: Rules = [
    (r"((?:patch_embed|layers\.\d+)\..+)", r"backbone.\1"),  # backbones.SwinTransformer uses Microsoft's names
]
SWIN_IMAGENET_IGNORED: Ignored = [
    (r"head\." + WB, "the ImageNet classifier; MaskFormer has its own heads"),
    (r"norm\." + WB, "the classifier's LayerNorm after stage 4; MaskFormer normalises each stage output "
                     "with its own norm0..norm3, which start fresh (as in the official code)"),
    (r"layers\.\d+\.blocks\.\d+\.attn_mask", "the shift mask for 224 x 224 inputs; ours is built for every "
                                             "input size (backbones.shifted_window_mask)"),
]


# ---------------------------------------------------------------------------------------------
# Tensor transforms (run before the renaming)
# ---------------------------------------------------------------------------------------------


def add_backbone_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A detectron2 ImageNet pickle's names (`stem.conv1.weight`) → a model's (`backbone.stem.conv1.weight`)."""
    return {name if name.startswith("backbone.") else f"backbone.{name}": tensor for name, tensor in state.items()}


def split_in_proj(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """nn.MultiheadAttention's packed `in_proj_weight` (3C, C) / `in_proj_bias` (3C,) → q/k/v_proj.

    Rows [0, C) project the queries, [C, 2C) the keys, [2C, 3C) the values.
    """
    out = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(.*)\.in_proj_(weight|bias)", name)
        if match is None:
            out[name] = tensor
            continue
        for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):  # 3 x (C, C) or 3 x (C,)
            out[f"{match[1]}.{part}_proj.{match[2]}"] = chunk.clone()
    return out


def merge_hf_qkv(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The HF Swin's separate query / key / value Linear layers → Microsoft's packed `qkv` (3C, C)."""
    out = {}
    for name, tensor in state.items():
        match = re.fullmatch(r"(.*\.attention\.self)\.(query|key|value)\.(weight|bias)", name)
        if match is None:
            out[name] = tensor
        elif match[2] == "query":
            parts = [state.get(f"{match[1]}.{part}.{match[3]}") for part in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise ConversionError(f"{name}: the Swin query projection has no key/value partner")
            out[f"{match[1]}.qkv.{match[3]}"] = torch.cat(parts, dim=0)  # (3C, C) or (3C,)
    return out


def check_relative_position_index(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replace every Swin `relative_position_index` (N, N) by ours, after checking they are equal."""
    out = dict(state)
    for name, index in state.items():
        if not name.endswith("relative_position_index"):
            continue
        window = math.isqrt(index.shape[0])
        ours = backbones.relative_position_index(window)  # (N, N), N = window²
        if index.shape != ours.shape or not torch.equal(index.long(), ours):
            raise ConversionError(f"{name}: this relative-position index differs from backbones."
                                  f"relative_position_index({window}); the Swin variants disagree")
        out[name] = ours
    return out


# ---------------------------------------------------------------------------------------------
# The machinery
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One checkpoint layout: its transforms, its rename table and the tensors it may leave out."""

    description: str
    rules: Rules
    ignored: Ignored
    transforms: tuple[Callable[[dict[str, Tensor]], dict[str, Tensor]], ...] = ()


HF = Source("Hugging Face MaskFormer", HF_RULES, HF_IGNORED, (merge_hf_qkv, check_relative_position_index))
DETECTRON2 = Source("official detectron2 MaskFormer", DETECTRON2_RULES, DETECTRON2_IGNORED,
                    (split_in_proj, check_relative_position_index))
TORCHVISION = Source("torchvision ResNet", TORCHVISION_RULES, TORCHVISION_IGNORED)
SWIN_IMAGENET = Source("Microsoft Swin", SWIN_IMAGENET_RULES, SWIN_IMAGENET_IGNORED, (check_relative_position_index,))
D2_IMAGENET = Source("detectron2 ImageNet ResNet", D2_RESNET_RULES, D2_IMAGENET_IGNORED, (add_backbone_prefix,))


def rename(name: str, rules: Rules) -> str | None:
    """Our name for a source tensor `name`: the first rule whose pattern matches it in full, or None."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, name)
        if match is not None:
            return match.expand(replacement)
    return None


def convert_state_dict(state: dict[str, Tensor], source: Source) -> tuple[dict[str, Tensor], list[str]]:
    """Rename `state` onto our names → (our state dict, ["name: why it was left out", ...]).

    Raises ConversionError naming every tensor that neither a rule nor the ignore table covers,
    and any two tensors that would land on the same name of ours.
    """
    for transform in source.transforms:
        state = transform(state)
    converted, left_out, unmatched = {}, [], []
    for name, tensor in state.items():
        reason = next((why for pattern, why in source.ignored if re.fullmatch(pattern, name)), None)
        if reason is not None:
            left_out.append(f"{name}: {reason}")
            continue
        ours = rename(name, source.rules)
        if ours is None:
            unmatched.append(name)
            continue
        if ours in converted:
            raise ConversionError(f"{source.description}: two tensors map onto {ours} (the second: {name})")
        converted[ours] = tensor
    if unmatched:
        shown = "\n  ".join(unmatched[:20]) + ("\n  ..." if len(unmatched) > 20 else "")
        raise ConversionError(f"{source.description}: {len(unmatched)} tensor(s) match no rule of tooling/convert.py:\n"
                              f"  {shown}")
    return converted, left_out


def hf_to_ours(hf_state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A transformers MaskFormerForInstanceSegmentation state dict → ours (loads with strict=True)."""
    return convert_state_dict(hf_state_dict, HF)[0]


def detectron2_to_ours(d2_state_dict: dict[str, np.ndarray | Tensor]) -> dict[str, Tensor]:
    """An official checkpoint's "model" dict (numpy arrays or tensors) → ours (loads with strict=True)."""
    return convert_state_dict(as_tensors(d2_state_dict), DETECTRON2)[0]


def swin_to_ours(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A Microsoft ImageNet Swin (the file's dict, or its "model" entry) → {"backbone.…": tensor}."""
    return convert_state_dict(weight_files.unwrap(state_dict, "model"), SWIN_IMAGENET)[0]


def as_tensors(state: dict[str, np.ndarray | Tensor]) -> dict[str, Tensor]:
    """numpy arrays (detectron2 pickles) → torch tensors of the same dtype and values."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# Whole files (read by machinery/weight_files.py) → our state dict and config
# ---------------------------------------------------------------------------------------------


def load_hf_folder(path: str | Path) -> tuple[dict[str, Tensor], str, dict, list[str]]:
    """A Hugging Face MaskFormer folder (weights + config.json) → (our state dict, config name,
    config overrides, class names). Build the model with
    `maskformer.build_model(name, num_classes=len(class_names), **overrides)`."""
    folder = Path(path)
    name, overrides, class_names = weight_files.read_hf_config(folder)
    state = hf_to_ours(weight_files.read_hf_weights(folder))
    rows = state["class_head.weight"].shape[0]
    if rows != len(class_names) + 1:
        raise ConversionError(f"{folder}: config.json names {len(class_names)} classes but the class head "
                              f"predicts {rows} = K + 1 outputs")
    return state, name, overrides, class_names


def imagenet_backbone(state: dict[str, Tensor], source: Source) -> tuple[str, int | None]:
    """(backbones.py name, ResNet stem width or None) of a converted ImageNet backbone, from its shapes."""
    if source in (TORCHVISION, D2_IMAGENET):
        depths = [len({k.split(".")[2] for k in state if k.startswith(f"backbone.layer{i}.")}) for i in range(1, 5)]
        block = backbones.Bottleneck if "backbone.layer1.0.conv3.weight" in state else backbones.BasicBlock
        found = [n for n, (b, layers) in backbones.RESNETS.items() if b is block and layers == depths]
        if "backbone.conv2.weight" in state:  # three stem convs: the DeepLab stem (R101c)
            found = [n for n, (base, _) in backbones.RESNET_VARIANTS.items() if base in found]
        width = state["backbone.conv1.weight"].shape[0]
    else:
        depths = [len({k.split(".")[4] for k in state if k.startswith(f"backbone.layers.{i}.blocks.")})
                  for i in range(4)]
        embed_dim = state["backbone.patch_embed.proj.weight"].shape[0]
        window = (math.isqrt(state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2
        found = [n for n, s in backbones.SWINS.items()
                 if (s["embed_dim"], s["depths"], s["window_size"]) == (embed_dim, depths, window)]
        width = None
    if not found:
        raise ConversionError(f"{source.description}: no backbone of backbones.py has this layout (depths {depths})")
    return found[0], width


# ---------------------------------------------------------------------------------------------
# Loading into a model, and the command line
# ---------------------------------------------------------------------------------------------


def is_stage_norm(name: str) -> bool:
    """A Swin stage-output LayerNorm (norm0..norm3): absent from ImageNet classifiers, fresh officially too."""
    return re.fullmatch(r"backbone\.norm\d\.(weight|bias)", name) is not None


def key_differences(model: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str], list[str]]:
    """How `state` fits `model`: (missing keys, unexpected keys, keys whose shapes differ). The one report
    every loader gives (`load_into` here; machinery/weights.py's `read_model` and `load_pretrained`);
    `shape_note` says what a reshaped key holds on each side."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    reshaped = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    return missing, unexpected, reshaped


def shape_note(model: nn.Module, state: dict[str, Tensor], key: str) -> str:
    """'key (file shape) vs (model shape)' of a key `key_differences` found reshaped."""
    return f"{key} {tuple(state[key].shape)} vs {tuple(model.state_dict()[key].shape)}"


def load_into(model: nn.Module, state: dict[str, Tensor]) -> tuple[list[str], list[str]]:
    """load_state_dict(strict=False) that also fails on shape mismatches → (missing, unexpected)."""
    reshaped = [shape_note(model, state, k) for k in key_differences(model, state)[2]]
    if reshaped:
        raise ConversionError("tensor shapes differ from the model's (file vs model):\n  " + "\n  ".join(reshaped[:20]))
    # missing / unexpected as load_state_dict counts them: a module may accept extra buffers
    # (FrozenBatchNorm2d drops BatchNorm's num_batches_tracked)
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def convert_file(source_name: str, path: str, config: str | None) -> tuple[nn.Module, dict[str, Tensor], list[str]]:
    """CLI core → (model with the weights loaded, state dict to save, class names); prints a report."""
    source = {"hf": HF, "detectron2": DETECTRON2, "torchvision": TORCHVISION, "swin": SWIN_IMAGENET,
              "d2-imagenet": D2_IMAGENET}[source_name]
    class_names: list[str] = []
    if source is HF:
        name, overrides, class_names = weight_files.read_hf_config(Path(path))
        if config is not None and config != name:
            raise ConversionError(f"--config {config}: {path}/config.json describes {name}")
        state, left_out = convert_state_dict(weight_files.read_hf_weights(Path(path)), HF)
        model = maskformer.build_model(name, num_classes=len(class_names), **overrides)
    elif source is DETECTRON2:
        if config is None:
            raise ConversionError("--from detectron2 needs --config NAME (a .pkl carries no config), e.g. --config r50")
        state, left_out = convert_state_dict(as_tensors(weight_files.load_detectron2_pickle(path)), DETECTRON2)
        values = weight_files.config_from_state_dict(state)  # what the shapes say: K, N, widths, depths, head
        K = values.pop("num_classes")
        model = maskformer.build_model(config, num_classes=K, **weight_files.overrides_against(config, values))
        class_names = weight_files.class_names_for(K)
    else:
        raw = as_tensors(weight_files.load_detectron2_pickle(path)) if source is D2_IMAGENET else \
            weight_files.unwrap(weight_files.load_torch_weights(path), "model")
        state, left_out = convert_state_dict(raw, source)
        backbone, width = imagenet_backbone(state, source)
        if config is not None and maskformer.CONFIGS[config].backbone != backbone:
            raise ConversionError(f"--config {config} uses {maskformer.CONFIGS[config].backbone}, "
                                  f"but {path} holds a {backbone}")
        name = config or weight_files.config_name_for(backbone)
        model = maskformer.build_model(name, **weight_files.backbone_overrides(name, backbone, width))
    missing, unexpected = load_into(model, state)
    for line in left_out:
        print(f"left out {line}")
    if source in (HF, DETECTRON2):
        if missing or unexpected:
            raise ConversionError(f"{path} does not fit {model.config.backbone}: missing {missing[:10]}, "
                                  f"unexpected {unexpected[:10]}")
        return model, model.state_dict(), class_names
    # ImageNet: only the backbone comes from the file; everything else keeps its initialisation
    fresh = [k for k in missing if k.startswith("backbone.")]
    stage_norms = [k for k in fresh if is_stage_norm(k)]
    if unexpected or len(fresh) != len(stage_norms):
        raise ConversionError(f"{path} does not fit {model.config.backbone}: backbone tensors missing "
                              f"{[k for k in fresh if k not in stage_norms][:10]}, unexpected {unexpected[:10]}")
    if stage_norms:
        print(f"fresh: {', '.join(stage_norms)} (Swin stage-output norms, absent from ImageNet classifiers; "
              f"the official code starts them fresh too)")
    print(f"{len(missing) - len(fresh)} tensors outside the backbone are not in the file and keep their random "
          f"initialisation (expected: the pixel decoder, transformer module and heads learn on segmentation data)")
    return model, {k: v for k, v in model.state_dict().items() if k in state}, class_names

