"""Tests for maskformer.py: shapes, attention and position encoding against naive formulas,
gradient flow, determinism, config errors, and params/FLOPs against the paper's Table 1.

Big configs are built on the meta device (shapes only), so counting their parameters and
FLOPs costs no memory and no arithmetic.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import maskformer
from maskformer import (
    CONFIGS,
    HEADS,
    MultiHeadAttention,
    build_model,
    sine_position_encoding,
)
from tooling import flops

K = 5  # classes in the small-model tests


def tiny(head: str = "mask_classification", **overrides) -> maskformer.MaskFormer:
    torch.manual_seed(0)
    return build_model("tiny", num_classes=K, head=head, **overrides)


def all_tensors(outputs: dict) -> list[torch.Tensor]:
    """Every tensor of a model output, aux_outputs included."""
    tensors = []
    for value in outputs.values():
        if torch.is_tensor(value):
            tensors.append(value)
        else:
            for aux in value:
                tensors.extend(all_tensors(aux))
    return tensors


# ---------------------------------------------------------------------------------------------
# Output shapes
# ---------------------------------------------------------------------------------------------


def test_mask_classification_shapes_train_and_eval():
    model = tiny()
    N, L = model.config.num_queries, model.config.dec_layers
    images = torch.randn(2, 3, 64, 96)
    out = model.train()(images)
    assert out["pred_logits"].shape == (2, N, K + 1)
    assert out["pred_masks"].shape == (2, N, 16, 24)
    assert len(out["aux_outputs"]) == L - 1
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, N, K + 1) and aux["pred_masks"].shape == (2, N, 16, 24)
    with torch.no_grad():
        out = model.eval()(images)
    assert set(out) == {"pred_logits", "pred_masks"}


def test_no_aux_outputs_without_deep_supervision():
    out = tiny(deep_supervision=False).train()(torch.randn(1, 3, 64, 64))
    assert set(out) == {"pred_logits", "pred_masks"}


def test_deeper_decoder_gives_one_aux_output_per_earlier_layer():
    out = tiny(dec_layers=4).train()(torch.randn(1, 3, 64, 64))
    assert len(out["aux_outputs"]) == 3


@pytest.mark.parametrize("head", ["per_pixel", "per_pixel_plus"])
def test_per_pixel_baseline_shapes(head):
    model = tiny(head)
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = model.eval()(images)
    assert set(out) == {"sem_seg_logits"}
    assert out["sem_seg_logits"].shape == (2, K, 16, 24)
    out = model.train()(images)
    if head == "per_pixel_plus":  # K queries, one per class; deep supervision as the official head
        assert model.config.num_queries == K
        assert [a["sem_seg_logits"].shape for a in out["aux_outputs"]] == [(2, K, 16, 24)]
    else:
        assert set(out) == {"sem_seg_logits"}


@pytest.mark.parametrize("head", HEADS)
def test_odd_image_size(head):
    model = tiny(head).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 333, 517))
    h, w = math.ceil(333 / 4), math.ceil(517 / 4)  # 84, 130
    key = "pred_masks" if head == "mask_classification" else "sem_seg_logits"
    assert out[key].shape[-2:] == (h, w)


# ---------------------------------------------------------------------------------------------
# Building blocks against naive formulas
# ---------------------------------------------------------------------------------------------


def explicit_attention(attn: MultiHeadAttention, query, key, value):
    """softmax(Q Kᵀ / sqrt(d)) V per head, with the module's own projections."""
    B, Lq, C = query.shape
    num_heads = attn.num_heads
    d = C // num_heads
    q = query @ attn.q_proj.weight.T + attn.q_proj.bias
    k = key @ attn.k_proj.weight.T + attn.k_proj.bias
    v = value @ attn.v_proj.weight.T + attn.v_proj.bias
    heads = []
    for i in range(num_heads):
        channels = slice(i * d, (i + 1) * d)
        scores = q[..., channels] @ k[..., channels].transpose(1, 2) / math.sqrt(d)  # (B, Lq, Lk)
        heads.append(scores.softmax(-1) @ v[..., channels])
    return torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias


def test_attention_equals_explicit_formula():
    attn = randomize(MultiHeadAttention(dim=16, num_heads=4)).eval()
    query, key, value = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    expected = explicit_attention(attn, query, key, value)
    torch.testing.assert_close(attn(query, key, value), expected, atol=1e-5, rtol=1e-5)


def torch_attention(ours: MultiHeadAttention, batch_first: bool = False) -> nn.MultiheadAttention:
    """Reference: nn.MultiheadAttention (as the official code uses) holding our weights, packed."""
    dim = ours.q_proj.weight.shape[0]
    ref = nn.MultiheadAttention(dim, ours.num_heads, batch_first=batch_first).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ref


def randomize(module: nn.Module) -> nn.Module:
    """Random values in every parameter (biases and LayerNorm affines included)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(std=0.3)
    return module


def test_attention_equals_torch_multihead_attention():
    ours = randomize(MultiHeadAttention(dim=16, num_heads=4)).eval()
    ref = torch_attention(ours, batch_first=True)
    query, image_tokens = torch.randn(3, 4, 16), torch.randn(3, 9, 16)
    expected = ref(query, image_tokens, image_tokens, need_weights=False)[0]
    torch.testing.assert_close(ours(query, image_tokens, image_tokens), expected, atol=1e-5, rtol=1e-5)


def test_decoder_layer_equals_detr_post_norm_layer():
    """DETR's TransformerDecoderLayer.forward_post, sequence-first, with nn.MultiheadAttention."""
    layer = randomize(maskformer.TransformerDecoderLayer(16, 4, 32, dropout=0.1)).eval()
    B, N, HW, C = 2, 3, 10, 16
    tgt, memory = torch.randn(B, N, C), torch.randn(B, HW, C)
    query_pos, pos = torch.randn(N, C), torch.randn(HW, C)
    self_attn, cross_attn = torch_attention(layer.self_attn), torch_attention(layer.cross_attn)
    t, m = tgt.transpose(0, 1), memory.transpose(0, 1)  # (N, B, C), (HW, B, C)
    qp, p = query_pos[:, None], pos[:, None]
    t = layer.self_attn_norm(t + self_attn(t + qp, t + qp, value=t)[0])
    t = layer.cross_attn_norm(t + cross_attn(t + qp, m + p, value=m)[0])
    t = layer.ffn_norm(t + layer.ffn.linear2(F.relu(layer.ffn.linear1(t))))
    torch.testing.assert_close(layer(tgt, memory, query_pos, pos), t.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_encoder_layer_equals_detr_post_norm_layer():
    layer = randomize(maskformer.TransformerEncoderLayer(16, 4, 32, dropout=0.1)).eval()
    src, pos = torch.randn(2, 10, 16), torch.randn(10, 16)
    self_attn = torch_attention(layer.self_attn)
    s, p = src.transpose(0, 1), pos[:, None]  # (HW, B, C), (HW, 1, C)
    s = layer.self_attn_norm(s + self_attn(s + p, s + p, value=s)[0])
    s = layer.ffn_norm(s + layer.ffn.linear2(F.relu(layer.ffn.linear1(s))))
    torch.testing.assert_close(layer(src, pos), s.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_sine_position_encoding_equals_naive_loop():
    H, W, num_feats = 5, 7, 8
    pos = sine_position_encoding(H, W, num_feats)
    assert pos.shape == (2 * num_feats, H, W)
    eps, scale = 1e-6, 2 * math.pi
    expected = torch.empty(2 * num_feats, H, W, dtype=torch.float64)
    for i in range(H):
        for j in range(W):
            y = (i + 1) / (H + eps) * scale
            x = (j + 1) / (W + eps) * scale
            for c in range(2 * num_feats):
                coord, k = (y, c) if c < num_feats else (x, c - num_feats)
                angle = coord / 10000 ** (2 * (k // 2) / num_feats)
                expected[c, i, j] = math.sin(angle) if k % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(pos.double(), expected, atol=1e-5, rtol=0)


def test_mask_einsum_equals_loop():
    model = tiny().eval()
    queries = torch.randn(2, 3, model.config.hidden_dim)
    pixel_embeddings = torch.randn(2, model.config.mask_dim, 4, 5)
    masks = model.segment(queries, pixel_embeddings)["pred_masks"]
    mask_embeddings = model.mask_embed(queries)
    expected = torch.empty(2, 3, 4, 5)
    for b in range(2):
        for q in range(3):
            for y in range(4):
                for x in range(5):
                    expected[b, q, y, x] = torch.dot(mask_embeddings[b, q], pixel_embeddings[b, :, y, x])
    torch.testing.assert_close(masks, expected, atol=1e-5, rtol=1e-5)


def test_mask_embed_mlp_is_three_linear_layers_with_relu_between():
    model = tiny()
    x = torch.randn(2, 3, model.config.hidden_dim)
    l0, l1, l2 = model.mask_embed.layers
    expected = l2(F.relu(l1(F.relu(l0(x)))))
    torch.testing.assert_close(model.mask_embed(x), expected)


def test_decoder_norm_is_applied_to_each_output_but_not_fed_forward():
    """DETR's return_intermediate: layer l + 1 gets layer l's raw output; outputs are LayerNorm'ed."""
    model = tiny(dec_layers=3).eval()
    transformer = randomize(model.transformer)  # LayerNorms away from identity: re-norming shows
    res5 = torch.randn(2, model.backbone.out_channels["res5"], 3, 4)
    with torch.no_grad():
        outputs = transformer(res5)
        x = transformer.input_proj(res5)
        memory = x.flatten(2).transpose(1, 2)
        pos = sine_position_encoding(3, 4, model.config.hidden_dim // 2).flatten(1).T
        tgt = torch.zeros(2, model.config.num_queries, model.config.hidden_dim)
        expected = []
        for layer in transformer.decoder_layers:
            tgt = layer(tgt, memory, transformer.query_pos.weight, pos)
            expected.append(transformer.decoder_norm(tgt))
    torch.testing.assert_close(outputs, torch.stack(expected))


def official_encoder_top(pixel_decoder: nn.Module, res5: torch.Tensor) -> torch.Tensor:
    """The official TransformerEncoderPixelDecoder's top level, sequence-first with nn.MultiheadAttention
    as there: input_proj, then each encoder layer as DETR's forward_post, the sine encoding added
    to q and k, no final LayerNorm; (B, C5, h, w) → (B, conv_dim, h, w)."""
    x = pixel_decoder.input_proj(res5)
    B, C, h, w = x.shape
    src = x.flatten(2).permute(2, 0, 1)  # (hw, B, C)
    pos = sine_position_encoding(h, w, C // 2)[None].flatten(2).permute(2, 0, 1)  # (hw, 1, C)
    for layer in pixel_decoder.encoder_layers:
        attention = torch_attention(layer.self_attn)
        src = layer.self_attn_norm(src + attention(src + pos, src + pos, value=src)[0])
        src = layer.ffn_norm(src + layer.ffn.linear2(F.relu(layer.ffn.linear1(src))))
    return src.permute(1, 2, 0).reshape(B, C, h, w)


def test_pixel_decoder_encoder_feeds_the_fpn_top_and_the_transformer_module():
    """enc_layers > 0 (official TransformerEncoderPixelDecoder): the encoder output, not res5, is what
    the FPN's top 3x3 conv and the transformer module read; changing its last layer changes both."""
    model = tiny(enc_layers=2).eval()
    randomize(model.pixel_decoder.encoder_layers)  # LayerNorms away from identity
    assert model.pixel_decoder.output_convs["res5"].conv.in_channels == model.config.conv_dim
    assert isinstance(model.transformer.input_proj, nn.Identity)  # conv_dim = hidden_dim: nothing to project
    inputs = {}
    model.pixel_decoder.output_convs["res5"].register_forward_pre_hook(lambda m, a: inputs.update(fpn_top=a[0]))
    model.transformer.register_forward_pre_hook(lambda m, a: inputs.update(transformer=a[0]))
    images = torch.randn(2, 3, 96, 160)  # res5: 3 x 5
    with torch.no_grad():
        features = model.backbone(images)
        expected = official_encoder_top(model.pixel_decoder, features["res5"])  # (2, conv_dim, 3, 5)
        before = model(images)
        assert inputs["fpn_top"].shape == (2, model.config.conv_dim, 3, 5)
        torch.testing.assert_close(inputs["fpn_top"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(inputs["transformer"], expected, atol=1e-5, rtol=1e-5)
        pixel_embeddings, _ = model.pixel_decoder(features)
        model.pixel_decoder.encoder_layers[-1].ffn_norm.bias.add_(1.0)  # perturb the encoder's last layer
        perturbed_embeddings, image_features = model.pixel_decoder(features)
        after = model(images)
    assert not torch.allclose(perturbed_embeddings, pixel_embeddings, atol=1e-3)  # E_pixel moved (FPN)
    torch.testing.assert_close(image_features, expected + 1.0)  # F moved by exactly the bias change
    torch.testing.assert_close(inputs["transformer"], expected + 1.0)
    assert not torch.allclose(after["pred_logits"], before["pred_logits"], atol=1e-3)  # the decoder saw it


def test_without_encoder_the_pixel_decoder_passes_res5_on():
    """enc_layers == 0 (BasePixelDecoder): F is res5 itself, projected to hidden_dim by the transformer."""
    model = tiny().eval()
    assert not hasattr(model.pixel_decoder, "input_proj") and len(model.pixel_decoder.encoder_layers) == 0
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 64))
        _, image_features = model.pixel_decoder(features)
    assert image_features is features["res5"]
    assert model.transformer.input_proj.in_channels == model.backbone.out_channels["res5"]


# ---------------------------------------------------------------------------------------------
# Whole-model behaviour
# ---------------------------------------------------------------------------------------------


def zero_gradient_parameters(names: list[str], head: str) -> set[str]:
    """Parameters whose gradient is exactly zero at initialisation, by construction:
    - every key-projection bias (decoder, and the pixel decoder's encoder if any): q·(k + b) adds
      the same q·b to a whole row of scores, and the softmax ignores that;
    - the first decoder layer's self-attention (not in PerPixelBaseline, which has no decoder):
      its targets start at zero, so with the zero-init v/out biases its output is the constant 0
      and its LayerNorm returns just the norm's bias.
    """
    zero = {n for n in names if n.endswith("k_proj.bias")}
    if head == "per_pixel":
        return zero
    first = "transformer.decoder_layers.0.self_attn."
    zero |= {f"{first}{p}" for p in ("q_proj.weight", "q_proj.bias", "k_proj.weight", "v_proj.weight",
                                     "out_proj.weight")}
    zero.add("transformer.decoder_layers.0.self_attn_norm.weight")
    return zero


@pytest.mark.parametrize(("head", "enc_layers"), [(head, 0) for head in HEADS]
                         + [("mask_classification", 1), ("per_pixel", 1)])  # per_pixel: only via the FPN
def test_gradients_reach_every_parameter(head, enc_layers):
    model = tiny(head, enc_layers=enc_layers).train()
    out = model(torch.randn(2, 3, 64, 64))
    sum(t.pow(2).mean() for t in all_tensors(out)).backward()
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("backbone.layer4") for n in names)  # res5 is used by every head
    assert any(n.startswith("pixel_decoder.encoder_layers.0.") for n in names) == (enc_layers > 0)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []
    zero = {n for n, p in model.named_parameters() if p.grad.abs().max() < 1e-6}
    assert zero == zero_gradient_parameters(names, head)


def test_deterministic_given_seed():
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = tiny().eval()(images)["pred_masks"]
        b = tiny().eval()(images)["pred_masks"]
        torch.manual_seed(1)
        c = build_model("tiny", num_classes=K).eval()(images)["pred_masks"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_dropout_only_in_training_mode():
    model = tiny(dropout=0.5)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(images)["pred_logits"], model(images)["pred_logits"])
        model.train()
        assert not torch.equal(model(images)["pred_logits"], model(images)["pred_logits"])


# ---------------------------------------------------------------------------------------------
# Configs and build_model
# ---------------------------------------------------------------------------------------------


def test_build_model_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="r50.*swin_l.*tiny"):
        build_model("resnet50")
    with pytest.raises(ValueError, match="num_querys.*valid fields.*num_queries"):
        build_model("tiny", num_querys=10)
    with pytest.raises(ValueError, match="head must be one of"):
        build_model("tiny", head="mask")
    with pytest.raises(ValueError, match="num_heads"):
        build_model("tiny", num_heads=3)


def test_build_model_overrides_and_resolved_config():
    model = build_model("tiny", num_classes=7, num_queries=11, backbone_kwargs={"width": 16})
    assert model.config.num_classes == 7 and model.config.num_queries == 11
    assert model.config.backbone_kwargs == {"norm": "bn", "width": 16}  # merged into the named config's
    assert model.backbone.out_channels["res5"] == 8 * 16  # resnet18: res5 has 8x the base width
    assert CONFIGS["tiny"].backbone_kwargs == {"norm": "bn", "width": 32}  # the named config is untouched
    plus = build_model("tiny", num_classes=9, head="per_pixel_plus")
    assert plus.config.num_queries == 9 and plus.transformer.query_pos.num_embeddings == 9


def test_state_dict_prefixes():
    prefixes = {name.split(".")[0] for name in tiny().state_dict()}
    assert prefixes == {"backbone", "pixel_decoder", "transformer", "class_head", "mask_embed"}
    assert {name.split(".")[0] for name in tiny("per_pixel").state_dict()} == {
        "backbone", "pixel_decoder", "pixel_classifier"}


# Exact parameter counts of the Hugging Face port with 150 classes (REFERENCE.md). Ours use
# frozen BatchNorm (buffers, not parameters) in the ResNets, hence R50/R101 ~0.1% lower.
HF_PARAMS_M = {"r50": 41.31, "r101": 60.30, "swin_t": 41.76, "swin_s": 63.08, "swin_b": 101.83,
               "swin_l": 211.58}


@pytest.mark.parametrize("name", list(HF_PARAMS_M))
def test_parameter_count_matches_paper(name):
    with torch.device("meta"):
        model = build_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(HF_PARAMS_M[name], rel=0.01)


def test_parameter_count_with_pixel_decoder_encoder_is_closed_form():
    """COCO-panoptic R50 (6 pixel-decoder encoder layers) = r50 + 6 DETR encoder layers (d 256,
    FFN 2048) + input_proj (1x1, 2048 → 256, bias) − the top 3x3 conv reading res5 (2048 → 256)
    + the one reading the encoder output (256 → 256) − the transformer's 1x1 input_proj (2048 → 256,
    now an Identity: its input is 256 wide already)."""
    with torch.device("meta"):
        base = sum(p.numel() for p in build_model("r50").parameters())
        coco = sum(p.numel() for p in build_model("r50", enc_layers=6).parameters())
    d, ffn, c5 = 256, 2048, 2048
    attention = 4 * (d * d + d)  # q, k, v and output projections, with biases
    encoder_layer = attention + (d * ffn + ffn) + (ffn * d + d) + 2 * (2 * d)  # + MLP + 2 LayerNorms
    conv1x1 = c5 * d + d
    assert coco == base + 6 * encoder_layer + conv1x1 - c5 * d * 9 + d * d * 9 - conv1x1


def test_count_flops_hand_worked_conv():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert flops.count_flops(conv, (5, 7)) * 1e9 == 5 * 7 * 8 * (3 * 3 * 3)  # one MAC per output·input·tap


def test_count_flops_same_on_cpu_and_meta():
    """The meta device decomposes attention into matmuls; on CPU our custom formula counts it."""
    cpu = flops.count_flops(tiny().eval(), 128)
    with torch.device("meta"):
        meta = flops.count_flops(tiny(), 128)
    assert cpu == pytest.approx(meta, rel=1e-9)
    without_attention = tiny().eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        without_attention(torch.zeros(1, 3, 128, 128))
    assert counter.get_total_flops() / 2e9 < cpu  # the plain counter misses CPU attention


# Table 1 (G multiply-adds, fvcore); FlopCounterMode counts a few % less (no norms/upsampling).
PAPER_FLOPS_G = {"r50": (512, 53), "r101": (512, 73), "swin_t": (512, 55), "swin_s": (512, 79),
                 "swin_b": (640, 195), "swin_l": (640, 375)}


@pytest.mark.parametrize("name", list(PAPER_FLOPS_G))
def test_flops_match_paper(name):
    crop, paper = PAPER_FLOPS_G[name]
    with torch.device("meta"):
        model = build_model(name)
    assert flops.count_flops(model, crop) == pytest.approx(paper, rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["r50", "swin_t"])
def test_named_config_forward_at_odd_size(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=K)
    images = torch.randn(1, 3, 97, 130)
    out = model.train()(images)
    assert out["pred_masks"].shape == (1, 100, 25, 33) and len(out["aux_outputs"]) == 5
    with torch.no_grad():
        out = model.eval()(images)
    assert out["pred_logits"].shape == (1, 100, K + 1) and torch.isfinite(out["pred_masks"]).all()
