"""Published weight files: reading them without running their code, and the model they describe.

Not a part of the paper: infrastructure of tooling/convert.py (which renames the tensors read here onto
our parameters) and machinery/weights.py (which downloads the files). Three formats hold the published
weights: the official detectron2 `model_final_*.pkl` (a pickle of numpy arrays), torch files
(`.pth`/`.bin`) and Hugging Face folders (`model.safetensors` + `config.json`). A pickle is a
program, so each is read in a way that can only yield tensors: a restricted unpickler, torch's
weights-only loader, and our own `.safetensors` reader. The config a file describes comes from the
Hugging Face config.json or, for a detectron2 file that carries none, from the tensors' shapes.

Reading order: `RestrictedUnpickler` (the pickle globals a detectron2 file may use, and no other)
-> `load_detectron2_pickle` -> `load_torch_weights` -> `read_safetensors` -> `read_hf_weights` ->
`hf_config_to_ours` (a Hugging Face config.json → our config name and overrides) / `read_hf_config`
-> `config_from_state_dict` (what converted tensors' shapes say) -> `official_test_resize` /
`class_names_for` (what a converted model was evaluated at, its class names).
"""

from __future__ import annotations

import codecs
import collections
import importlib
import json
import math
import pickle
import re
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import backbones
import maskformer
from machinery import dataset_files
from machinery.checkpoint import CheckpointError, read_checkpoint


class ConversionError(ValueError):
    """A state dict that does not fit the rules (unknown tensors, collisions, unsupported layouts)."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside RestrictedUnpickler.ALLOWED (it could run code)."""


def allowed_globals() -> dict[tuple[str, str], object]:
    """The globals a pickle of numpy arrays needs, under the module names numpy 1.x and 2.x write."""
    try:
        multiarray, numeric = (importlib.import_module(f"numpy._core.{m}") for m in ("multiarray", "numeric"))
    except ImportError:  # numpy < 2
        multiarray, numeric = (importlib.import_module(f"numpy.core.{m}") for m in ("multiarray", "numeric"))
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles store bytes as encode(text, "latin1")
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 2 moved numpy.core to numpy._core
        table[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct  # an empty array to fill
        table[(f"{core}.multiarray", "scalar")] = multiarray.scalar  # a numpy scalar from its bytes
        table[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer  # arrays in pickle protocol 5
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and plain containers, and nothing else.

    A pickle is a program: its GLOBAL opcodes import any callable (os.system, eval, ...) and its
    REDUCE opcodes call it. A detectron2 checkpoint needs only the few globals that rebuild numpy
    arrays (dict, list, tuple, str and numbers need none), so `find_class` hands out exactly those
    and refuses every other name before anything is imported or called.
    """

    ALLOWED = allowed_globals()

    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 pickles of numpy arrays
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refusing to unpickle the global '{module}.{name}': a detectron2 checkpoint "
                f"holds only numpy arrays and plain containers, and anything else could run code")
        return self.ALLOWED[(module, name)]


def unwrap(state: dict, key: str) -> dict:
    """`state[key]` when `state` is a checkpoint wrapping its weights (e.g. {"model": ...}), else `state`."""
    return state[key] if isinstance(state.get(key), dict) else state


def load_detectron2_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """The {name: numpy array} of an official `model_final_*.pkl` ({"model": ..., "__author__": ...})."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file (expected an official MaskFormer model_final_*.pkl)")
    with open(path, "rb") as f:
        try:
            checkpoint = RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: one clear line
            raise ConversionError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None
    state = unwrap(checkpoint, "model") if isinstance(checkpoint, dict) else None
    if not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise ConversionError(f"{path}: expected a dict {{'model': {{name: numpy array}}}}")
    return state


def load_torch_weights(path: str | Path) -> dict[str, Tensor]:
    """A `.pth`/`.bin` state dict read with torch.load(weights_only=True): tensors and containers only."""
    try:
        state = read_checkpoint(path)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """{name: tensor} of a `.safetensors` file; ConversionError (one line) on any malformed part.

    Why our own reader rather than the optional `safetensors` package: the format is small and fully
    specified (an 8-byte little-endian header length N, N bytes of JSON {name: {"dtype", "shape",
    "data_offsets": [begin, end]}, "__metadata__": {...}}, then the raw little-endian tensor bytes,
    offsets counted from the end of the header), so these lines read it exactly, checking every
    offset and size, and a fresh clone loads the published Hugging Face files with requirements.txt
    alone. tests/test_weights.py compares it with the package on every dtype.
    """
    path = Path(path)
    raw = bytearray(path.read_bytes())  # writable: torch.frombuffer shares it without a copy
    if sys.byteorder != "little":
        raise ConversionError(f"{path}: reading .safetensors needs a little-endian machine")
    if len(raw) < 8:
        raise ConversionError(f"{path}: too short for a .safetensors file ({len(raw)} bytes)")
    header_size = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8:8 + header_size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConversionError(f"{path}: not a .safetensors file (header: {e})") from None
    body = memoryview(raw)[8 + header_size:]
    tensors, covered = {}, []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        begin, end = info.get("data_offsets", (-1, -1))
        shape = info.get("shape", [])
        if dtype is None:
            raise ConversionError(f"{path}: {name} has dtype {info.get('dtype')!r}; "
                                  f"supported: {', '.join(SAFETENSORS_DTYPES)}")
        nbytes = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(body) or end - begin != nbytes:
            raise ConversionError(f"{path}: {name} {info.get('dtype')} {shape} needs {nbytes} bytes, "
                                  f"its offsets [{begin}, {end}) do not fit the {len(body)}-byte body")
        flat = torch.frombuffer(body[begin:end], dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(shape)
        covered.append((begin, end))
    if sum(e - b for b, e in covered) != len(body) or any(
            b1 < e0 for (_, e0), (b1, _) in zip(sorted(covered), sorted(covered)[1:])):
        raise ConversionError(f"{path}: the tensors' byte ranges overlap or leave gaps in the body")
    return tensors


def read_hf_weights(folder: Path) -> dict[str, Tensor]:
    """model.safetensors (read by `read_safetensors`) or pytorch_model.bin (torch.load, weights only)."""
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        return read_safetensors(safetensors_file)
    if bin_file.is_file():
        return load_torch_weights(bin_file)
    raise ConversionError(f"{folder}: no model.safetensors or pytorch_model.bin (expected a Hugging Face "
                          f"model folder such as facebook/maskformer-swin-tiny-ade)")


SWIN_FIXED = dict(patch_size=4, mlp_ratio=4.0, qkv_bias=True, use_absolute_embeddings=False)  # all our Swins


def hf_backbone(backbone: dict, where: str) -> tuple[str, int | None]:
    """The HF backbone_config → (backbones.py name, ResNet width or None for a Swin)."""
    kind = backbone.get("model_type")
    if kind in ("swin", "maskformer-swin"):
        sizes = {k: list(v) if isinstance(v, list | tuple) else v for k, v in backbone.items()
                 if k in ("embed_dim", "depths", "num_heads", "window_size")}
        fixed = {k: backbone.get(k, v) for k, v in SWIN_FIXED.items()}
        found = [name for name, ours in backbones.SWINS.items() if ours == sizes]
        if not found or fixed != SWIN_FIXED:
            raise ConversionError(f"{where}: no Swin of backbones.py has {sizes} and {fixed}; "
                                  f"available: {list(backbones.SWINS)}, all with {SWIN_FIXED}")
        return found[0], None
    if kind == "resnet":
        bottleneck = backbone.get("layer_type", "bottleneck") == "bottleneck"
        block = backbones.Bottleneck if bottleneck else backbones.BasicBlock
        width = backbone.get("embedding_size", 64)
        widths = [width * 2**i * block.expansion for i in range(4)]
        if backbone.get("downsample_in_bottleneck") or backbone.get("downsample_in_first_stage") \
                or list(backbone.get("hidden_sizes", widths)) != widths:
            raise ConversionError(f"{where}: backbones.py has torchvision-style ResNets only (stride on the "
                                  f"3x3 conv, stage widths {widths})")
        depths = list(backbone.get("depths", []))
        found = [name for name, (b, layers) in backbones.RESNETS.items() if b is block and layers == depths]
        if not found:
            raise ConversionError(f"{where}: no ResNet of backbones.py has depths {depths}")
        return found[0], width
    raise ConversionError(f"{where}: backbone type {kind!r} is not supported (expected swin or resnet)")


def config_name_for(backbone: str) -> str:
    """The first named config (maskformer.CONFIGS) using `backbone`, else its family's paper config."""
    for name, config in maskformer.CONFIGS.items():
        if config.backbone == backbone:
            return name
    return "swin_t" if backbone.startswith("swin") else "r50"


def overrides_against(name: str, values: dict) -> dict:
    """Only the config fields whose value differs from the named config's."""
    base = asdict(maskformer.CONFIGS[name])
    return {k: v for k, v in values.items() if base[k] != v}


def backbone_overrides(name: str, backbone: str, width: int | None) -> dict:
    """Overrides that make config `name` use `backbone`, with this ResNet stem width (None: a Swin)."""
    overrides = overrides_against(name, {"backbone": backbone})
    if width is not None and maskformer.CONFIGS[name].backbone_kwargs.get("width", 64) != width:
        overrides["backbone_kwargs"] = {"width": width}
    return overrides


def hf_config_to_ours(config: dict, where: str) -> tuple[str, dict, list[str]]:
    """A Hugging Face MaskFormerConfig (the dict of its config.json) → (name, overrides, class names)."""
    if not isinstance(config.get("backbone_config"), dict):
        raise ConversionError(f"{where}: no backbone_config (timm backbones are not supported)")
    backbone, width = hf_backbone(config["backbone_config"], where)
    name = config_name_for(backbone)
    detr = config.get("decoder_config") or {}  # absent in old files: DETR's defaults, as below
    if detr.get("activation_function", "relu") != "relu":
        raise ConversionError(f"{where}: the decoder must use ReLU, as DETR and maskformer.py do")
    id2label = config.get("id2label") or {}
    class_names = [id2label[k] for k in sorted(id2label, key=int)]
    overrides = overrides_against(name, dict(
        conv_dim=config.get("fpn_feature_size", 256), mask_dim=config.get("mask_feature_size", 256),
        hidden_dim=detr.get("d_model", 256), num_heads=detr.get("decoder_attention_heads", 8),
        dim_feedforward=detr.get("decoder_ffn_dim", 2048), dec_layers=detr.get("decoder_layers", 6),
        num_queries=detr.get("num_queries", 100), dropout=detr.get("dropout", 0.1),
        enc_layers=0,  # the HF port has only BasePixelDecoder (no TransformerEncoderPixelDecoder)
    ))
    return name, {**overrides, **backbone_overrides(name, backbone, width)}, class_names


def read_hf_config(folder: Path) -> tuple[str, dict, list[str]]:
    """(config name, overrides, class names) from a Hugging Face model folder's config.json."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{folder}: no config.json (expected a Hugging Face MaskFormer model folder)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise ConversionError(f"{config_file}: not valid JSON ({e})") from None
    return hf_config_to_ours(config, str(config_file))


def config_from_state_dict(state: dict[str, Tensor]) -> dict:
    """Config fields that our converted tensors' shapes determine (all but num_heads and dropout).

    Used for detectron2 checkpoints, which carry no config; --config gives the rest.
    """
    def count(pattern: str) -> int:
        return len({m[1] for m in (re.fullmatch(pattern, k) for k in state) if m})

    values = {"conv_dim": state["pixel_decoder.mask_features.weight"].shape[1],
              "mask_dim": state["pixel_decoder.mask_features.weight"].shape[0],
              "enc_layers": count(r"pixel_decoder\.encoder_layers\.(\d+)\..*")}  # 0: BasePixelDecoder
    if values["enc_layers"] > 0:  # the official encoder shares MASK_FORMER.DIM_FEEDFORWARD with the decoder
        values["dim_feedforward"] = state["pixel_decoder.encoder_layers.0.ffn.linear1.weight"].shape[0]
    if "pixel_classifier.weight" in state:
        return {**values, "head": "per_pixel", "num_classes": state["pixel_classifier.weight"].shape[0]}
    query_pos = state["transformer.query_pos.weight"]  # (N, C)
    values.update(num_queries=query_pos.shape[0], hidden_dim=query_pos.shape[1],
                  dim_feedforward=state["transformer.decoder_layers.0.ffn.linear1.weight"].shape[0],
                  dec_layers=count(r"transformer\.decoder_layers\.(\d+)\..*"))
    if "class_head.weight" in state:
        return {**values, "head": "mask_classification", "num_classes": state["class_head.weight"].shape[0] - 1}
    return {**values, "head": "per_pixel_plus", "num_classes": query_pos.shape[0]}  # one query per class


def class_names_for(num_classes: int) -> list[str]:
    """Names for a checkpoint that carries none: ADE20K-150's for 150 classes, else "class k"."""
    names = dataset_files.official_classes("ade20k")[0]
    return names if num_classes == len(names) else [f"class {k}" for k in range(num_classes)]
