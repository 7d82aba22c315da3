"""tooling/convert.py: published weights load into our model and compute the same function.

The reference is the Hugging Face port (transformers.MaskFormerForInstanceSegmentation), built
offline from a config with random weights; tests that need it skip when `transformers` is absent.
Random weights are made "non-trivial" first (`randomise`): HF initialises the decoder with
std 0.02, relative-position tables and BatchNorm statistics with constants, and such a model is
too flat to notice e.g. swapped query/key projections (they moved the mask logits by 4e-5). After
`randomise` the outputs are O(1-10); swapping one layer's cross-attention q/k projections, flipping
one relative-position bias table or dropping the shift mask then moves the mask logits by 2-4
(measured when writing these tests), while a correct conversion agrees to ~3e-5.

The official detectron2 layout and the ImageNet layouts are built by hand here (names and shapes
written out from the official / torchvision / Microsoft code), independently of tooling/convert.py's tables.
"""

from __future__ import annotations

import math
import os
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch

import backbones
import inference
import maskformer
from machinery import conversion, weight_files
from tooling import convert

K = 5  # classes of the small test models
STAGES = ["stage1", "stage2", "stage3", "stage4"]
MINI_SWIN = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window_size=7)
SMALL_DECODER = dict(d_model=64, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128, num_queries=10)
SMALL_HEAD = dict(conv_dim=64, mask_dim=64, hidden_dim=64, num_heads=4, dim_feedforward=128, dec_layers=2,
                  num_queries=10)
IMAGE_SIZE = (333, 517)  # sides not multiples of 32 (nor of the window): every padding path runs


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers", reason="the Hugging Face port is the reference for these checks")


@pytest.fixture(scope="module")
def hf_mini(transformers):
    """One randomised HF model with the mini Swin and a small decoder, shared (read-only) by the tests."""
    return hf_model(transformers, hf_swin(transformers, MINI_SWIN))


@pytest.fixture
def swin_mini(monkeypatch) -> str:
    """A 4-stage Swin small enough for a fast test, added to backbones.SWINS for this test only."""
    monkeypatch.setitem(backbones.SWINS, "swin_mini", MINI_SWIN)
    return "swin_mini"


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every float tensor random and O(1) in effect: weights N(0, 1/fan_in), norms 1 ± 0.2, biases,
    relative-position tables, query embeddings and BatchNorm statistics random too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif "relative_position_bias_table" in name or "queries_embedder" in name or "query_pos" in name:
                t.copy_(torch.randn(t.shape, generator=g))
            elif t.dim() == 1 and name.endswith("weight"):
                t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
            elif t.dim() == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(t[0].numel()))
    return model.eval()


def hf_model(transformers, backbone_config, num_labels: int = K, small: bool = True):
    """A randomised HF MaskFormerForInstanceSegmentation (eval mode), small decoder unless small=False."""
    sizes = dict(fpn_feature_size=64, mask_feature_size=64, decoder_config=dict(model_type="detr", **SMALL_DECODER))
    config = transformers.MaskFormerConfig(backbone_config=backbone_config, num_labels=num_labels,
                                           id2label={i: f"class_{i}" for i in range(num_labels)},
                                           **(sizes if small else {}))
    return randomise(transformers.MaskFormerForInstanceSegmentation(config))


def hf_swin(transformers, sizes: dict):
    return transformers.MaskFormerSwinConfig(**sizes, out_features=STAGES)


def hf_resnet(transformers, **kwargs):
    return transformers.ResNetConfig(**kwargs, out_features=STAGES)


def ours_for(hf, **extra_overrides) -> maskformer.MaskFormer:
    """Our model for a HF model: config via weight_files.hf_config_to_ours, weights via conversion.hf_to_ours."""
    name, overrides, class_names = weight_files.hf_config_to_ours(hf.config.to_dict(), "test config")
    if "backbone_kwargs" in extra_overrides:
        extra = extra_overrides.pop("backbone_kwargs")
        overrides["backbone_kwargs"] = {**overrides.get("backbone_kwargs", {}), **extra}
    model = maskformer.build_model(name, num_classes=len(class_names), **overrides, **extra_overrides).eval()
    model.load_state_dict(conversion.hf_to_ours(hf.state_dict()), strict=True)
    return model


def max_differences(hf, model, images: torch.Tensor) -> tuple[float, float, dict, object]:
    """(max |Δ class logits|, max |Δ mask logits|, our outputs, HF outputs) on `images`."""
    with torch.no_grad():
        theirs = hf(pixel_values=images)
        ours = model(images)
    assert ours["pred_masks"].shape == theirs.masks_queries_logits.shape
    assert ours["pred_masks"].shape[-2:] == tuple(math.ceil(s / 4) for s in images.shape[-2:])
    assert ours["pred_masks"].std() > 0.5 and ours["pred_logits"].std() > 0.3  # far from a flat function
    return ((ours["pred_logits"] - theirs.class_queries_logits).abs().max().item(),
            (ours["pred_masks"] - theirs.masks_queries_logits).abs().max().item(), ours, theirs)


def image(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 3, *IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Hugging Face port: equal outputs
# ---------------------------------------------------------------------------------------------


def test_hf_swin_folder_and_cli_equal_reference(hf_mini, swin_mini, tmp_path):
    """A saved HF folder (safetensors + config.json, transformers 4.x tensor names as on the Hub)
    → load_hf_folder → our model: the same class and mask logits; the CLI's checkpoint too."""
    hf = hf_mini
    hf.save_pretrained(tmp_path / "hf")
    state, name, overrides, class_names = conversion.load_hf_folder(tmp_path / "hf")
    assert class_names == [f"class_{i}" for i in range(K)]
    assert overrides["backbone"] == swin_mini
    model = maskformer.build_model(name, num_classes=len(class_names), **overrides).eval()
    model.load_state_dict(state, strict=True)
    d_logits, d_masks, _, _ = max_differences(hf, model, image())
    assert d_logits < 1e-4 and d_masks < 1e-4

    convert.main(["--from", "hf", "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "ours.pt")])
    checkpoint = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert checkpoint["class_names"] == class_names
    rebuilt = maskformer.MaskFormer(maskformer.MaskFormerConfig(**checkpoint["config"]))
    assert rebuilt.config == model.config  # same config and same tensors: the same function
    rebuilt.load_state_dict(checkpoint["model"], strict=True)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in rebuilt.state_dict().items())


def test_hf_pytorch_model_bin_with_current_names(hf_mini, swin_mini, tmp_path):
    """pytorch_model.bin holding transformers-5 names (o_proj, mlp.fc1) converts to the same tensors."""
    hf = hf_mini
    (tmp_path / "hf").mkdir()
    torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "hf" / "config.json")
    assert any(".o_proj." in k for k in hf.state_dict())
    state = conversion.load_hf_folder(tmp_path / "hf")[0]
    hf.save_pretrained(tmp_path / "hub")  # the 4.x names: out_proj, layers.N.fc1
    hub_state = conversion.load_hf_folder(tmp_path / "hub")[0]
    assert state.keys() == hub_state.keys()
    assert all(torch.equal(state[k], hub_state[k]) for k in state)


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_hf_resnet_equals_reference(transformers, norm):
    """HF ResNet (trainable BatchNorm with random running statistics, eval mode) → our ResNet-18
    (width 32, the `tiny` config) with trainable or frozen BatchNorm: the same outputs."""
    hf = hf_model(transformers, hf_resnet(transformers, layer_type="basic", depths=[2, 2, 2, 2], embedding_size=32,
                                          hidden_sizes=[32, 64, 128, 256]))
    model = ours_for(hf, backbone_kwargs={"norm": norm})
    assert model.config.backbone == "resnet18" and model.config.backbone_kwargs["width"] == 32
    d_logits, d_masks, _, _ = max_differences(hf, model, image())
    assert d_logits < 1e-4 and d_masks < 1e-4


@pytest.mark.slow
def test_hf_swin_tiny_150_classes_equals_reference(transformers):
    """The published configuration: Swin-T, 150 classes, full decoder (~10 s)."""
    hf = hf_model(transformers, hf_swin(transformers, backbones.SWINS["swin_tiny"]), num_labels=150, small=False)
    model = ours_for(hf)
    assert model.config == maskformer.build_model("swin_t").config
    d_logits, d_masks, _, _ = max_differences(hf, model, image())
    assert d_logits < 1e-4 and d_masks < 1e-4


@pytest.mark.slow
def test_hf_resnet50_150_classes_equals_reference(transformers):
    """The published configuration: ResNet-50 (HF BatchNorm → our FrozenBatchNorm), 150 classes (~8 s)."""
    hf = hf_model(transformers, hf_resnet(transformers, depths=[3, 4, 6, 3]), num_labels=150, small=False)
    model = ours_for(hf)
    assert model.config == maskformer.build_model("r50").config
    d_logits, d_masks, _, _ = max_differences(hf, model, image(1))
    assert d_logits < 1e-4 and d_masks < 1e-4


def test_semantic_inference_equals_hf_post_processing(transformers, hf_mini, swin_mini):
    """Eq. (3.4b) at the masks' stride-4 resolution: inference.semantic_inference == HF's
    post_process_semantic_segmentation (no target size). With a target size the two differ by
    design: HF resizes the stride-4 *scores* straight to the target, while the official code (and
    inference.class_scores) upsamples the mask *logits* to the padded input, crops the padding, then
    resizes; only the unresized scores are the same quantity."""
    hf = hf_mini
    model = ours_for(hf)
    _, _, ours, theirs = max_differences(hf, model, image(2))
    scores = inference.semantic_inference(ours["pred_logits"], ours["pred_masks"])[0]  # (K, h, w)
    processor = transformers.MaskFormerImageProcessor()
    result = processor.post_process_semantic_segmentation(theirs, return_segmentation_scores=True)[0]
    torch.testing.assert_close(scores, result["segmentation_scores"], atol=1e-5, rtol=1e-5)
    agree = (scores.argmax(0) == result["segmentation"]).float().mean().item()
    assert agree > 0.999  # only near-ties may flip


def test_hf_unknown_and_missing_tensors_are_reported(hf_mini, swin_mini, tmp_path):
    hf = hf_mini
    state = {**hf.state_dict(), "model.extra_head.weight": torch.zeros(3)}
    with pytest.raises(conversion.ConversionError, match="model.extra_head.weight"):
        conversion.hf_to_ours(state)
    with pytest.raises(conversion.ConversionError, match="no config.json"):
        conversion.load_hf_folder(tmp_path)
    hf.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(conversion.ConversionError, match="no model.safetensors or pytorch_model.bin"):
        conversion.load_hf_folder(tmp_path)


# ---------------------------------------------------------------------------------------------
# Official detectron2 checkpoints: a hand-built official layout round-trips exactly
# ---------------------------------------------------------------------------------------------


def official_name(name: str, old_head: bool) -> str:
    """The official detectron2 name of one of our tensors, written out from the official module
    tree (mask_former/modeling/...). q/k/v projections get their packed in_proj name."""
    pixel_decoder = "sem_seg_head." if old_head else "sem_seg_head.pixel_decoder."
    predictor = "sem_seg_head.predictor."
    p = name.split(".")
    if p[0] == "backbone" and p[1] == "conv1":
        return "backbone.stem.conv1.weight"
    if p[0] == "backbone" and p[1] == "bn1":
        return f"backbone.stem.conv1.norm.{p[2]}"
    if p[0] == "backbone" and p[1] in ("layer1", "layer2", "layer3", "layer4"):  # = res2 … res5
        block = f"backbone.res{int(p[1][5:]) + 1}.{p[2]}"
        if p[3].startswith("conv"):
            return f"{block}.{p[3]}.weight"
        if p[3].startswith("bn"):
            return f"{block}.conv{p[3][2:]}.norm.{p[4]}"
        return f"{block}.shortcut.weight" if p[4] == "0" else f"{block}.shortcut.norm.{p[5]}"
    if p[0] == "backbone":
        return name  # Swin: Microsoft's names on both sides
    if p[0] == "pixel_decoder" and p[1] in ("mask_features", "input_proj"):
        return f"{pixel_decoder}{p[1]}.{p[2]}"
    if p[0] == "pixel_decoder" and p[1] == "encoder_layers":  # TransformerEncoderPixelDecoder's encoder
        return encoder_layer_name(f"{pixel_decoder}transformer.encoder.layers.{p[2]}", p[3:])
    if p[0] == "pixel_decoder":  # res2 … res5 = adapter_/layer_ 1 … 4
        module = f"{pixel_decoder}{'adapter' if p[1] == 'lateral_convs' else 'layer'}_{int(p[2][3:]) - 1}"
        return f"{module}.weight" if p[3] == "conv" else f"{module}.norm.{p[4]}"
    if p[0] == "pixel_classifier":  # PerPixelBaseline: the predictor is one 1x1 conv
        return f"{predictor}{p[1]}"
    if p[0] == "class_head":
        return f"{predictor}class_embed.{p[1]}"
    if p[0] == "mask_embed":
        return f"{predictor}mask_embed.layers.{p[2]}.{p[3]}"
    if p[1] == "query_pos":
        return f"{predictor}query_embed.weight"
    if p[1] == "input_proj":
        return f"{predictor}input_proj.{p[2]}"
    if p[1] == "decoder_norm":
        return f"{predictor}transformer.decoder.norm.{p[2]}"
    assert p[1] == "decoder_layers", name
    return decoder_layer_name(f"{predictor}transformer.decoder.layers.{p[2]}", p[3:])


def decoder_layer_name(layer: str, p: list[str]) -> str:
    """DETR's TransformerDecoderLayer: self_attn, multihead_attn (packed in_proj), linear1/2, norm1/2/3."""
    if p[0] in ("self_attn", "cross_attn"):
        attention = f"{layer}.{'self_attn' if p[0] == 'self_attn' else 'multihead_attn'}"
        return f"{attention}.out_proj.{p[2]}" if p[1] == "out_proj" else f"{attention}.in_proj_{p[2]}"
    if p[0] == "ffn":
        return f"{layer}.{p[1]}.{p[2]}"
    norms = {"self_attn_norm": "norm1", "cross_attn_norm": "norm2", "ffn_norm": "norm3"}
    return f"{layer}.{norms[p[0]]}.{p[1]}"


def encoder_layer_name(layer: str, p: list[str]) -> str:
    """DETR's TransformerEncoderLayer: self_attn (packed in_proj), linear1/2, norm1 (after attention), norm2."""
    if p[0] == "self_attn":
        return f"{layer}.self_attn.out_proj.{p[2]}" if p[1] == "out_proj" else f"{layer}.self_attn.in_proj_{p[2]}"
    if p[0] == "ffn":
        return f"{layer}.{p[1]}.{p[2]}"
    norms = {"self_attn_norm": "norm1", "ffn_norm": "norm2"}
    return f"{layer}.{norms[p[0]]}.{p[1]}"


def official_layout(model: maskformer.MaskFormer, old_head: bool = False) -> dict[str, np.ndarray]:
    """Our model's weights in the official checkpoint layout: {official name: numpy array}, with the
    attention q/k/v stacked into nn.MultiheadAttention's in_proj (rows q, k, v) and the loss buffer."""
    state = model.state_dict()
    layout: dict[str, list] = {}
    for name, tensor in state.items():
        layout.setdefault(official_name(name, old_head), []).append(tensor)
    layout["criterion.empty_weight"] = [torch.ones(model.config.num_classes + 1)]
    return {k: torch.cat(v).numpy() if len(v) == 3 else v[0].numpy() for k, v in layout.items()}


def write_pickle(path, state: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "matching_heuristics": True}, f)


def test_official_layout_names_are_the_official_ones():
    """Spot checks of the hand-written official names against names quoted from the official code."""
    model = maskformer.build_model("r50", num_classes=K, **SMALL_HEAD)
    names = set(official_layout(model))
    for expected in ["backbone.stem.conv1.norm.running_var", "backbone.res2.0.shortcut.norm.bias",
                     "backbone.res5.2.conv3.weight", "sem_seg_head.pixel_decoder.adapter_1.weight",
                     "sem_seg_head.pixel_decoder.layer_4.norm.weight", "sem_seg_head.pixel_decoder.mask_features.bias",
                     "sem_seg_head.predictor.transformer.decoder.layers.0.self_attn.in_proj_weight",
                     "sem_seg_head.predictor.transformer.decoder.layers.1.multihead_attn.out_proj.bias",
                     "sem_seg_head.predictor.transformer.decoder.layers.1.norm3.weight",
                     "sem_seg_head.predictor.transformer.decoder.norm.bias",
                     "sem_seg_head.predictor.query_embed.weight",
                     "sem_seg_head.predictor.input_proj.weight", "sem_seg_head.predictor.class_embed.weight",
                     "sem_seg_head.predictor.mask_embed.layers.2.bias"]:
        assert expected in names, expected


@pytest.mark.parametrize("old_head", [False, True], ids=["pixel_decoder_prefix", "released_v1_names"])
def test_detectron2_resnet_pickle_round_trips_exactly(tmp_path, old_head):
    """Our R50 (random FrozenBN statistics) with 1 pixel-decoder encoder layer, the layout of the
    COCO-panoptic R50/R101 models (TransformerEncoderPixelDecoder), written in the official layout
    and pickled → the CLI → the very same tensors, and a config read back from the shapes."""
    model = randomise(maskformer.build_model("r50", num_classes=K, enc_layers=1, **SMALL_HEAD))
    layout = official_layout(model, old_head)
    # The official TransformerEncoderPixelDecoder's names and shapes, written out: input_proj is a
    # 1x1 conv 2048 → conv_dim with bias, layer_4 reads conv_dim channels, the encoder layers sit in
    # `transformer.encoder.layers`; the predictor reads conv_dim = hidden_dim channels: no input_proj.
    pixel_decoder = "sem_seg_head." if old_head else "sem_seg_head.pixel_decoder."
    encoder_layer = f"{pixel_decoder}transformer.encoder.layers.0."
    assert layout[f"{pixel_decoder}input_proj.weight"].shape == (64, 2048, 1, 1)
    assert layout[f"{pixel_decoder}input_proj.bias"].shape == (64,)
    assert layout[f"{pixel_decoder}layer_4.weight"].shape == (64, 64, 3, 3)
    assert layout[f"{encoder_layer}self_attn.in_proj_weight"].shape == (3 * 64, 64)
    for name in ("linear1.weight", "linear2.bias", "norm1.weight", "norm2.bias", "self_attn.out_proj.bias"):
        assert f"{encoder_layer}{name}" in layout, name
    assert not any(".encoder.layers.1." in k or "predictor.input_proj" in k or "predictor.transformer.encoder" in k
                   for k in layout)
    write_pickle(tmp_path / "model_final.pkl", layout)
    convert.main(["--from", "detectron2", "--input", str(tmp_path / "model_final.pkl"), "--config", "r50",
                  "--output", str(tmp_path / "ours.pt")])
    checkpoint = torch.load(tmp_path / "ours.pt", weights_only=True)
    expected = model.state_dict()
    assert checkpoint["model"].keys() == expected.keys()
    assert all(torch.equal(checkpoint["model"][k], expected[k]) for k in expected)
    config = checkpoint["config"]
    assert (config["num_classes"], config["num_queries"], config["dec_layers"], config["enc_layers"]) == (K, 10, 2, 1)
    assert (config["hidden_dim"], config["conv_dim"], config["dim_feedforward"]) == (64, 64, 128)
    assert checkpoint["class_names"] == [f"class {k}" for k in range(K)]


def test_detectron2_swin_layout_round_trips_exactly(swin_mini):
    model = randomise(maskformer.build_model("swin_t", num_classes=K, backbone=swin_mini, **SMALL_HEAD))
    converted = conversion.detectron2_to_ours(official_layout(model))
    expected = model.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


@pytest.mark.parametrize("head", ["per_pixel", "per_pixel_plus"])
def test_detectron2_per_pixel_baselines_round_trip(head):
    """The §4 baselines' official layouts; the head and K are read back from the shapes."""
    model = randomise(maskformer.build_model("tiny", num_classes=K, head=head, backbone_kwargs={"norm": "frozen_bn"}))
    converted = conversion.detectron2_to_ours(official_layout(model))
    expected = model.state_dict()
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
    values = weight_files.config_from_state_dict(converted)
    assert (values["head"], values["num_classes"]) == (head, K)


def test_detectron2_encoder_tensors_go_to_the_pixel_decoder_only():
    """The COCO-panoptic pixel-decoder encoder is converted (it used to be refused); a predictor
    encoder (MASK_FORMER.ENC_LAYERS, 0 in every official config) has no counterpart here: an error."""
    weight = np.zeros((4, 4), np.float32)
    pixel_decoder = {"sem_seg_head.pixel_decoder.transformer.encoder.layers.3.linear1.weight": weight,
                     "sem_seg_head.pixel_decoder.input_proj.bias": np.zeros(4, np.float32)}
    assert set(conversion.detectron2_to_ours(pixel_decoder)) == {
        "pixel_decoder.encoder_layers.3.ffn.linear1.weight", "pixel_decoder.input_proj.bias"}
    predictor = {"sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight": weight}
    with pytest.raises(conversion.ConversionError, match="predictor.transformer.encoder.layers.0.linear1.weight"):
        conversion.detectron2_to_ours(predictor)


def test_detectron2_cli_needs_config(tmp_path):
    with pytest.raises(SystemExit, match="needs --config"):
        convert.main(["--from", "detectron2", "--input", str(tmp_path / "x.pkl"), "--output", str(tmp_path / "o.pt")])


# ---------------------------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays(tmp_path, protocol):
    arrays = OrderedDict(a=np.arange(12, dtype=np.float32).reshape(3, 4), b=np.ones((2,), np.float64),
                         c=np.array([3, -1], np.int64))
    with open(tmp_path / "x.pkl", "wb") as f:  # (+ a numpy scalar and bytes, as checkpoints' extras may hold)
        pickle.dump({"model": arrays, "__author__": "test", "iteration": np.int64(7), "raw": b"\x00\xff"}, f,
                    protocol=protocol)
    loaded = weight_files.load_detectron2_pickle(tmp_path / "x.pkl")
    assert loaded.keys() == arrays.keys()
    for k, v in arrays.items():
        assert np.asarray(loaded[k]).dtype == np.asarray(v).dtype and np.array_equal(loaded[k], v)


class Payload:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f'touch "{self.marker}"',)


@pytest.mark.skipif(os.name != "posix", reason="the payload's shell command is POSIX `touch`")
def test_malicious_pickle_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    blob = pickle.dumps({"model": {"w": np.zeros(2, np.float32)}, "__author__": Payload(marker)})
    (tmp_path / "model_final_evil.pkl").write_bytes(blob)
    refused = rf"model_final_evil\.pkl.*'{os.system.__module__}\.system'"
    with pytest.raises(weight_files.UnsafePickleError, match=refused):
        weight_files.load_detectron2_pickle(tmp_path / "model_final_evil.pkl")
    assert not marker.exists()  # refused before anything ran
    pickle.loads(blob)  # the payload is real: a plain unpickler runs it
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# ImageNet backbones, built from the documented key layouts
# ---------------------------------------------------------------------------------------------


def torchvision_resnet_layout(bottleneck: bool, depths: list[int]) -> dict[str, torch.Tensor]:
    """torchvision.models.resnet*().state_dict() names and shapes, written out (random values)."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def conv(name, out_c, in_c, k):
        state[name] = torch.randn(out_c, in_c, k, k, generator=g)

    def bn(name, c):
        for t in ("weight", "bias", "running_mean"):
            state[f"{name}.{t}"] = torch.randn(c, generator=g)
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(100)

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    in_c = 64
    for i, blocks in enumerate(depths):
        planes = 64 * 2**i
        out_c = 4 * planes if bottleneck else planes
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            if bottleneck:  # 1x1 reduce, 3x3, 1x1 expand
                shapes = [(planes, in_c, 1), (planes, planes, 3), (out_c, planes, 1)]
            else:  # two 3x3
                shapes = [(planes, in_c, 3), (planes, planes, 3)]
            for k, (o, c, size) in enumerate(shapes, start=1):
                conv(f"{p}.conv{k}.weight", o, c, size)
                bn(f"{p}.bn{k}", o)
            if j == 0 and (in_c != out_c or i > 0):  # the first block of a stage changes shape
                conv(f"{p}.downsample.0.weight", out_c, in_c, 1)
                bn(f"{p}.downsample.1", out_c)
            in_c = out_c
    state["fc.weight"] = torch.randn(1000, in_c, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


def microsoft_swin_layout(embed_dim: int, depths: list[int], num_heads: list[int], window: int) -> dict:
    """A Microsoft Swin classifier checkpoint ({"model": ...}, e.g. swin_tiny_patch4_window7_224.pth),
    names and shapes written out, with the relative-position index computed here from its definition."""
    g = torch.Generator().manual_seed(0)
    state = {"patch_embed.proj.weight": torch.randn(embed_dim, 3, 4, 4, generator=g),
             "patch_embed.proj.bias": torch.randn(embed_dim, generator=g),
             "patch_embed.norm.weight": torch.randn(embed_dim, generator=g),
             "patch_embed.norm.bias": torch.randn(embed_dim, generator=g)}
    coords = [(y, x) for y in range(window) for x in range(window)]
    index = torch.tensor([[(yi - yj + window - 1) * (2 * window - 1) + (xi - xj + window - 1) for yj, xj in coords]
                          for yi, xi in coords])
    resolution = 224 // 4
    for i, depth in enumerate(depths):
        C = embed_dim * 2**i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}"
            shapes = {"norm1.weight": (C,), "norm1.bias": (C,),
                      "attn.qkv.weight": (3 * C, C), "attn.qkv.bias": (3 * C,),
                      "attn.relative_position_bias_table": ((2 * window - 1) ** 2, num_heads[i]),
                      "attn.proj.weight": (C, C), "attn.proj.bias": (C,), "norm2.weight": (C,), "norm2.bias": (C,),
                      "mlp.fc1.weight": (4 * C, C), "mlp.fc1.bias": (4 * C,), "mlp.fc2.weight": (C, 4 * C),
                      "mlp.fc2.bias": (C,)}
            state.update({f"{p}.{k}": torch.randn(s, generator=g) for k, s in shapes.items()})
            state[f"{p}.attn.relative_position_index"] = index.clone()
            if j % 2 == 1 and resolution > window:  # shifted blocks of the classifier keep a mask buffer
                state[f"{p}.attn_mask"] = torch.zeros((resolution // window) ** 2, window**2, window**2)
        if i < len(depths) - 1:
            state[f"layers.{i}.downsample.reduction.weight"] = torch.randn(2 * C, 4 * C, generator=g)
            state[f"layers.{i}.downsample.norm.weight"] = torch.randn(4 * C, generator=g)
            state[f"layers.{i}.downsample.norm.bias"] = torch.randn(4 * C, generator=g)
            resolution //= 2
    C = embed_dim * 2 ** (len(depths) - 1)
    state.update({"norm.weight": torch.randn(C, generator=g), "norm.bias": torch.randn(C, generator=g),
                  "head.weight": torch.randn(1000, C, generator=g), "head.bias": torch.randn(1000, generator=g)})
    return {"model": state}


@pytest.mark.parametrize("bottleneck, depths, backbone", [(True, [3, 4, 6, 3], "resnet50"),
                                                           (False, [2, 2, 2, 2], "resnet18")])
def test_torchvision_resnet_fills_the_whole_backbone(tmp_path, capsys, bottleneck, depths, backbone):
    """torchvision's resnet50 → config r50; resnet18 → the `tiny` config, widened to ImageNet's 64."""
    source = torchvision_resnet_layout(bottleneck, depths)
    torch.save(source, tmp_path / "resnet.pth")
    convert.main(["--from", "torchvision", "--input", str(tmp_path / "resnet.pth"), "--output", str(tmp_path / "o.pt")])
    assert "left out fc.weight" in capsys.readouterr().out
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    assert saved["config"]["backbone"] == backbone
    model = maskformer.MaskFormer(maskformer.MaskFormerConfig(**saved["config"]))
    assert set(saved["model"]) == {k for k in model.state_dict() if k.startswith("backbone.")}
    missing, unexpected = conversion.load_into(model, saved["model"])
    assert unexpected == [] and not [k for k in missing if k.startswith("backbone.")]
    state = model.state_dict()
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in source.items()
               if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))  # (FrozenBN has no counter)


def test_microsoft_swin_fills_the_backbone_but_its_stage_norms(tmp_path, capsys, swin_mini):
    """Microsoft's layout (at the mini Swin's sizes, to stay fast) → the whole backbone but norm0..3."""
    source = microsoft_swin_layout(window=7, **{k: v for k, v in MINI_SWIN.items() if k != "window_size"})
    torch.save(source, tmp_path / "swin_mini_patch4_window7_224.pth")
    convert.main(["--from", "swin", "--input", str(tmp_path / "swin_mini_patch4_window7_224.pth"),
                  "--output", str(tmp_path / "o.pt")])
    out = capsys.readouterr().out
    assert "left out head.weight" in out and "left out norm.weight" in out and "attn_mask" in out
    saved = torch.load(tmp_path / "o.pt", weights_only=True)
    assert saved["config"]["backbone"] == swin_mini
    model = maskformer.MaskFormer(maskformer.MaskFormerConfig(**saved["config"]))
    missing, unexpected = conversion.load_into(model, saved["model"])
    assert unexpected == []
    # the per-stage output norms are not part of an ImageNet classifier (fresh in the official code too)
    assert sorted(k for k in missing if k.startswith("backbone.")) == \
        sorted(f"backbone.norm{i}.{t}" for i in range(4) for t in ("weight", "bias"))
    state = model.state_dict()
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in source["model"].items()
               if k.startswith(("patch_embed", "layers")) and not k.endswith("attn_mask"))


def test_wrong_relative_position_index_is_caught():
    source = microsoft_swin_layout(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], window=7)["model"]
    key = "layers.0.blocks.0.attn.relative_position_index"
    source[key] = source[key].T.contiguous()  # (i, j) → (j, i): the offsets' signs flip
    with pytest.raises(conversion.ConversionError, match="relative-position index"):
        conversion.swin_to_ours(source)
