"""Loading a model: the one loader (`read_model`), and published weights by name: the MaskFormer
checkpoints of the paper and the ImageNet backbones that start its training (Figure 2 "backbone", §4
"Training settings": every paper model starts from an ImageNet-pretrained backbone).

    python infer.py --weights maskformer-swin-tiny-ade --input photo.jpg --output out/
    python infer.py --list                     # the table below: names, aliases, paper numbers
    python train.py --data ade20k --data-root D --config r50   # --weights imagenet is the default
    python -m tooling.fetch swin-t-ade         # only download + convert; prints the cached file's path

What happens to a name, once per name and machine:
1. `download`: each file of the entry goes into the torch hub cache,
   `<torch.hub.get_dir()>/checkpoints/maskformer/<name>/<file>` (TORCH_HOME moves it), with a
   progress bar; it is written to `<file>.part` and renamed only once complete and checked.
2. `check_file`: the file's SHA-256 (or MD5) must start with the hex digest the table records: a
   full SHA-256 from the Hugging Face hub's LFS pointer, the SHA-256 prefix torchvision puts in its
   file names (`resnet50-0676ba61.pth`), the MD5 prefix the official model zoo puts in its
   (`model_final_d8dbeb.pkl`). Where the publisher gives no digest (the Swin release, the
   `config.json` files, two Hugging Face `pytorch_model.bin`), nothing is checked and the table says so.
3. conversion with machinery/conversion.py's rules (`conversion.convert_file`: the same tables and checks as
   `python -m tooling.convert`), saved as `<name>/converted.pt` beside the download; every later call
   loads that file and skips steps 1-3.

Offline, or behind a firewall, a download fails in one line naming the URL and the exact path to
put the file at. A mirror (a web server or a folder holding the files under the same relative
paths as the cache, e.g. `maskformer-swin-tiny-ade/model.safetensors`) replaces every publisher's
address: `MASKFORMER_WEIGHTS_MIRROR=https://host/dir` or `file:///data/weights`, or the `mirror`
argument (infer.py / train.py `--weights-mirror`). The tests serve small random checkpoints in
the published formats from a local folder this way, through the same code path.

Reading order: `Download` / `Published` / `ImageNet` (what a table row holds) → `MODELS` and
`IMAGENET` (the tables) → `lookup` → `resolve` / `imagenet_checkpoint` (the two entry points; `load_model`
and `load_imagenet` wrap them) →
`fetch` → `download` / `check_file` → `convert_model` → `print_table`; then the loading itself:
`load_weights` → `check_state_dict` (the one keys report, `conversion.key_differences`) → `read_model`
(our checkpoints and Hugging Face folders) → `model_from_flags` (infer.py) and `load_pretrained`
(train.py --weights: a part of a model, the rest fresh).

Differences from the official code: the official configs read the ImageNet ResNets as detectron2
pickles (`R-50.pkl`, `R-101.pkl`: torchvision's files renamed by tools/convert-torchvision-to-d2.py,
same tensors) and the Swins as pickles made by tools/convert-pretrained-swin-model-to-d2.py (the
Swin release's `.pth`, wrapped). We download torchvision's and the Swin release's own files, whose
names the official tools give, and rename them with machinery/conversion.py's TORCHVISION / SWIN_IMAGENET
rules. R101c's `R-103.pkl` exists only as a detectron2 pickle and is read as one (conversion.D2_IMAGENET);
its name layout is that of detectron2's converters, not checked against the published file here.
The converted checkpoint carries the official test resize of the model's dataset ("recipe",
datasets.published_recipe), as `python -m tooling.convert` writes it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

import maskformer
from machinery import conversion, datasets, weight_files
from machinery.checkpoint import CheckpointError, config_differences, load_checkpoint, read_checkpoint, save_checkpoint

MIRROR_ENV = "MASKFORMER_WEIGHTS_MIRROR"
HF = "https://huggingface.co"
ZOO = "https://dl.fbaipublicfiles.com/maskformer"
CHUNK = 1 << 20  # bytes read per step while downloading and hashing


class WeightsError(RuntimeError):
    """A name that is not in the table, a download that failed, a file whose digest is wrong."""


@dataclass(frozen=True)
class Download:
    """One published file. `sha256` / `md5`: hex digest, or a prefix of it; None where unpublished."""

    url: str
    sha256: str | None = None
    md5: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


@dataclass(frozen=True)
class Published:
    """A trained MaskFormer checkpoint: where it is, how to convert it, what the paper reports for it."""

    name: str
    alias: str
    source: str  # tooling/convert.py's --from: "hf" (a model folder) or "detectron2" (a model_final_*.pkl)
    config: str  # maskformer.CONFIGS name
    dataset: str  # "ADE20K-150" or "COCO panoptic"
    crop: str  # training crop side ("none": COCO panoptic trains without a crop)
    metric: str  # the paper's single-scale result for this checkpoint: "mIoU 46.7", "PQ 47.7"
    size_mb: int  # download size (MB) as the publisher lists it; 0: not listed (the model zoo)
    files: tuple[Download, ...]
    enc_layers: int = 0  # pixel-decoder encoder layers (6 in the COCO-panoptic R50/R101 models)


@dataclass(frozen=True)
class ImageNet:
    """An ImageNet classifier whose backbone starts a paper model's training (§4)."""

    backbone: str  # backbones.py name
    source: str  # tooling/convert.py's --from: "torchvision", "swin" or "d2-imagenet"
    pretraining: str  # "IN-1k 224", "IN-22k 384"
    file: Download

    @property
    def name(self) -> str:
        return f"imagenet-{self.backbone}"


def _hf(repo: str, alias: str, config: str, dataset: str, crop: str, metric: str, size_mb: int,
        weights_file: str, sha256: str | None) -> Published:
    """A Hugging Face model folder (facebook/<repo>): its weights file and its config.json (sizes, names)."""
    base = f"{HF}/facebook/{repo}/resolve/main"
    files = (Download(f"{base}/{weights_file}", sha256=sha256), Download(f"{base}/config.json"))
    return Published(repo, alias, "hf", config, dataset, crop, metric, size_mb, files)


def _zoo(name: str, alias: str, config: str, dataset: str, crop: str, metric: str, md5: str,
         enc_layers: int = 0) -> Published:
    """An official model-zoo checkpoint; its file name ends in the first 6 hex digits of its MD5."""
    folder = "semantic-ade20k" if dataset == ADE else "panoptic-coco"
    url = f"{ZOO}/{folder}/{name}/model_final_{md5}.pkl"
    return Published(name, alias, "detectron2", config, dataset, crop, metric, 0, (Download(url, md5=md5),),
                     enc_layers)


# The Hugging Face ports (facebook/…, converted from the official checkpoints by the transformers
# team, so the paper's number is theirs too) and the official model zoo (MODEL_ZOO.md of
# facebookresearch/MaskFormer). SHA-256: the LFS pointer of the file on the hub's main branch.
ADE, COCO = "ADE20K-150", "COCO panoptic"
SAFE, BIN = "model.safetensors", "pytorch_model.bin"
MODELS: tuple[Published, ...] = (
    *[_hf(repo, alias, config, dataset, crop, metric, size_mb, file, sha256)
      for repo, alias, config, dataset, crop, metric, size_mb, file, sha256 in (
        ("maskformer-swin-tiny-ade", "swin-t-ade", "swin_t", ADE, "512", "mIoU 46.7", 167, SAFE,
         "d9a859b56efb9bf4804c124915461d6cde9b564cd720820db5ca710cd26fbc5e"),
        ("maskformer-swin-small-ade", "swin-s-ade", "swin_s", ADE, "512", "mIoU 49.8", 253, BIN,
         "f1ebe6c04b339a124e4ce5c8f5d2360f8397e9a59f1c6cc75dead67235d67c7e"),
        ("maskformer-swin-base-ade", "swin-b-ade", "swin_b", ADE, "640", "mIoU 52.7", 412, BIN,
         "03177538131eb2c906bbb9081b3ccc471cc52dc73db7332fb36b1698bcf6daca"),
        ("maskformer-swin-large-ade", "swin-l-ade", "swin_l", ADE, "640", "mIoU 54.1", 851, BIN, None),
        ("maskformer-swin-tiny-coco", "swin-t-coco", "swin_t", COCO, "none", "PQ 47.7", 167, SAFE,
         "3167fd842c11d81441ec70ea57b18f03574fac83c74a405d3b545a278fc8c31e"),
        ("maskformer-swin-small-coco", "swin-s-coco", "swin_s", COCO, "none", "PQ 49.7", 253, SAFE,
         "e4a6ba783bce9ba2bbec0c39fbd9f65236c5938e71d2a9d55de203714102f935"),
        ("maskformer-swin-base-coco", "swin-b-coco", "swin_b", COCO, "none", "PQ 51.8", 411, SAFE,
         "d80418c3bcb17c6a847accbca3a0d66b7574c5c767419aad3cd5fa9fad0441a4"),
        ("maskformer-swin-large-coco", "swin-l-coco", "swin_l", COCO, "none", "PQ 52.7", 850, SAFE,
         "2cb9f2b6eec7db534e7c13d47ce47e2785c969f3b41abbd329600b6ac8c31746"),
        ("maskformer-resnet50-ade", "r50-ade-hf", "r50", ADE, "512", "mIoU 44.5", 166, BIN, None))],
    # official detectron2 checkpoints (semantic-ade20k / panoptic-coco of MODEL_ZOO.md)
    *[_zoo(name, alias, config, ADE, crop, f"mIoU {miou}", md5) for name, alias, config, crop, miou, md5 in (
        ("maskformer_R50_bs16_160k", "r50-ade", "r50", "512", 44.5, "d8dbeb"),
        ("maskformer_R101_bs16_160k", "r101-ade", "r101", "512", 45.5, "1aeb94"),
        ("maskformer_R101c_bs16_160k", "r101c-ade", "r101c", "512", 46.0, "b432ea"),
        ("maskformer_swin_tiny_bs16_160k", "swin-t-ade-d2", "swin_t", "512", 46.7, "8657a5"),
        ("maskformer_swin_small_bs16_160k", "swin-s-ade-d2", "swin_s", "512", 49.8, "528157"),
        ("maskformer_swin_base_IN21k_384_bs16_160k_res640", "swin-b-ade-d2", "swin_b", "640", 52.7, "45388b"),
        ("maskformer_swin_large_IN21k_384_bs16_160k_res640", "swin-l-ade-d2", "swin_l", "640", 54.1, "aefa3b"))],
    *[_zoo(name, alias, config, COCO, "none", f"PQ {pq}", md5, enc_layers=6) for name, alias, config, pq, md5 in (
        ("maskformer_panoptic_R50_bs64_554k", "r50-coco", "r50", 46.5, "6f60dc"),
        ("maskformer_panoptic_R101_bs64_554k", "r101-coco", "r101", 47.6, "57b049"))],
)

# The ImageNet weights the official configs name (REFERENCE: configs/*/Base-*.yaml, tools/README.md).
SWIN_RELEASE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0"
IMAGENET: tuple[ImageNet, ...] = (
    ImageNet("resnet50", "torchvision", "IN-1k 224",
             Download("https://download.pytorch.org/models/resnet50-0676ba61.pth", sha256="0676ba61")),
    ImageNet("resnet101", "torchvision", "IN-1k 224",
             Download("https://download.pytorch.org/models/resnet101-63fe2227.pth", sha256="63fe2227")),
    # R101c: detectron2's own ImageNet training of the DeepLab-stem ResNet-101 (MODEL_ZOO.md "R-103.pkl")
    ImageNet("resnet101c", "d2-imagenet", "IN-1k 224",
             Download("https://dl.fbaipublicfiles.com/detectron2/DeepLab/R-103.pkl")),
    ImageNet("swin_tiny", "swin", "IN-1k 224", Download(f"{SWIN_RELEASE}/swin_tiny_patch4_window7_224.pth")),
    ImageNet("swin_small", "swin", "IN-1k 224", Download(f"{SWIN_RELEASE}/swin_small_patch4_window7_224.pth")),
    ImageNet("swin_base", "swin", "IN-22k 384", Download(f"{SWIN_RELEASE}/swin_base_patch4_window12_384_22k.pth")),
    ImageNet("swin_large", "swin", "IN-22k 384", Download(f"{SWIN_RELEASE}/swin_large_patch4_window12_384_22k.pth")),
)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def lookup(name: str) -> Published | None:
    """The table row whose name or alias is `name` (case-insensitive), else None."""
    key = name.lower()
    return next((m for m in MODELS if key in (m.name.lower(), m.alias.lower())), None)


def cache_root() -> Path:
    """`<torch hub dir>/checkpoints/maskformer`: where downloads and converted checkpoints live."""
    return Path(torch.hub.get_dir()) / "checkpoints" / "maskformer"


def resolve(spec: str, mirror: str | None = None, log=print) -> str:
    """A `--weights` value → the path of a checkpoint infer.py / train.py read.

    A name or alias of MODELS is downloaded, checked and converted on first use and read from the
    cache afterwards. A path (an existing file, or anything with a folder or a file suffix) is
    returned as is, for the caller to read or report; any other word: WeightsError.
    """
    entry = lookup(spec)
    if entry is None and (Path(spec).exists() or "/" in spec or os.sep in spec or Path(spec).suffix):
        return spec
    if entry is None:
        names = ", ".join(m.alias for m in MODELS)
        raise WeightsError(f"--weights {spec}: no such file, and not a published model name "
                           f"(python infer.py --list shows them: {names})")
    return str(cached_conversion(entry.name, entry.files, mirror, log, lambda folder: convert_model(entry, folder)))


def load_model(spec: str, mirror: str | None = None, log=print) -> tuple[maskformer.MaskFormer, list[str]]:
    """(model in eval mode, class names) of a published name / alias, a checkpoint file of ours or a
    Hugging Face model folder downloaded by hand: the one-call form for notebooks, e.g.
    `model, names = weights.load_model("swin-t-ade")`. `read_model` does the loading."""
    path = Path(resolve(spec, mirror, log)).expanduser()
    if not path.exists():
        raise WeightsError(f"{spec}: no such file or folder, and not a published model name (python infer.py --list)")
    model, class_names, _ = read_model(path)
    return model.eval(), class_names or weight_files.class_names_for(model.config.num_classes)


def imagenet_entry(backbone: str) -> ImageNet:
    """The ImageNet row for a backbones.py name; WeightsError naming the ones there are."""
    entry = next((e for e in IMAGENET if e.backbone == backbone), None)
    if entry is None:
        raise WeightsError(f"--weights imagenet: no ImageNet weights are published for {backbone} "
                           f"(available: {', '.join(e.backbone for e in IMAGENET)}); use --weights none")
    return entry


def imagenet_checkpoint(backbone: str, mirror: str | None = None, log=print) -> str:
    """Path of the converted ImageNet backbone ({"model": {"backbone.…": tensor}}) for `backbone`."""
    entry = imagenet_entry(backbone)
    return str(cached_conversion(entry.name, (entry.file,), mirror, log,
                                 lambda folder: convert_imagenet(entry, folder)))


def load_imagenet(model: torch.nn.Module, mirror: str | None = None, log=print) -> None:
    """Load the ImageNet weights of `model.config.backbone` into `model.backbone` (§4: every paper
    model starts so); everything else keeps its initialisation. One log line says what was loaded."""
    path = imagenet_checkpoint(model.config.backbone, mirror, log)
    state = read_checkpoint(path)["model"]
    missing, unexpected = conversion.load_into(model, state)
    if unexpected or any(k.startswith("backbone.") and not conversion.is_stage_norm(k) for k in missing):
        raise WeightsError(f"{path} does not fit {model.config.backbone}: unexpected {unexpected[:3]}, "
                           f"missing {[k for k in missing if k.startswith('backbone.')][:3]}")
    ours = model.state_dict()
    loaded = sum(k in ours for k in state)
    fresh_norms = ", Swin stage-output norms" if any(map(conversion.is_stage_norm, missing)) else ""
    log(f"ImageNet weights ({imagenet_entry(model.config.backbone).file.filename}, cached at {path}): "
        f"{loaded} tensors loaded into the backbone, {len(ours) - loaded} left at their random initialisation "
        f"(pixel decoder, transformer module, heads{fresh_norms})")


def cached_conversion(name: str, files: tuple[Download, ...], mirror: str | None, log, convert_fn) -> Path:
    """`<cache>/<name>/converted.pt`, made by `convert_fn(folder)` after fetching `files` if absent."""
    folder = cache_root() / name
    converted = folder / "converted.pt"
    if converted.is_file():
        return converted
    for file in files:
        fetch(file, folder / file.filename, mirror, log)
    log(f"converting {name} with tooling/convert.py's rules (once; cached at {converted})")
    save_checkpoint(converted, convert_fn(folder))  # atomic: a crash never leaves a torn converted.pt
    return converted


# ---------------------------------------------------------------------------------------------
# Downloading and checking
# ---------------------------------------------------------------------------------------------


def source_url(file: Download, relative: str, mirror: str | None) -> str:
    """The publisher's URL, or `<mirror>/<relative>` when a mirror is given (argument, then env var)."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    return f"{mirror.rstrip('/')}/{relative}" if mirror else file.url


def fetch(file: Download, path: Path, mirror: str | None, log) -> None:
    """Make sure `path` holds `file`, checked: download it if absent (a present file is re-checked)."""
    if not path.is_file():
        url = source_url(file, f"{path.parent.name}/{path.name}", mirror)
        download(url, path, log)
    check_file(path, file)


def download(url: str, path: Path, log) -> None:
    """`url` (http(s) or file://) → `path`, through `<path>.part`, with a progress bar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            log(f"downloading {url} to {path}")  # once connected: offline, the error below is the only line
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name,
                      disable=None) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        partial.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise WeightsError(f"cannot download {url} ({reason}); download it elsewhere and put it at {path}, "
                           f"or set {MIRROR_ENV} to a mirror holding {path.parent.name}/{path.name}") from None
    partial.replace(path)


def digests(path: Path) -> tuple[str, str]:
    """(SHA-256, MD5) of a file, read once in CHUNK-sized pieces."""
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha256.update(chunk)
            md5.update(chunk)
    return sha256.hexdigest(), md5.hexdigest()


def check_file(path: Path, file: Download) -> None:
    """WeightsError (and the file moved aside to `<path>.bad`) unless its digests start as recorded."""
    if file.sha256 is None and file.md5 is None:
        return  # the publisher gives no digest: nothing to check against
    sha256, md5 = digests(path)
    for kind, expected, actual in (("SHA-256", file.sha256, sha256), ("MD5", file.md5, md5)):
        if expected is not None and not actual.startswith(expected):
            bad = path.with_name(path.name + ".bad")
            path.replace(bad)
            raise WeightsError(f"{path}: {kind} {actual[:16]}… does not start with the published {expected[:16]} "
                               f"(a torn or different file of {file.url}; moved to {bad}, run again to download anew)")


# ---------------------------------------------------------------------------------------------
# Conversion (tooling/convert.py's rules) into the checkpoints infer.py / train.py read
# ---------------------------------------------------------------------------------------------


def convert_model(entry: Published, folder: Path) -> dict:
    """A downloaded model → {"model", "config", "class_names", "recipe", "source"} (infer.py's --weights format)."""
    path = folder if entry.source == "hf" else folder / entry.files[0].filename
    config = None if entry.source == "hf" else entry.config
    model, state, class_names = conversion.convert_file(entry.source, str(path), config)
    config = asdict(model.config)
    # "recipe": the official test resize (infer.py reads it; e.g. 640 for Swin-B/L on ADE20K), as tooling.convert writes
    return {"model": state, "config": config, "class_names": class_names,
            "recipe": datasets.published_recipe(config), "source": entry.files[0].url}


def convert_imagenet(entry: ImageNet, folder: Path) -> dict:
    """A downloaded ImageNet classifier → {"model": {"backbone.…": tensor}, "backbone", "source"}."""
    model, state, _ = conversion.convert_file(entry.source, str(folder / entry.file.filename), None)
    if model.config.backbone != entry.backbone:
        raise WeightsError(f"{folder / entry.file.filename} holds a {model.config.backbone}, not a {entry.backbone}")
    return {"model": state, "backbone": entry.backbone, "source": entry.file.url}


# ---------------------------------------------------------------------------------------------
# The model table (infer.py --list, docs/weights.md)
# ---------------------------------------------------------------------------------------------


def parameter_count(config: str, num_classes: int, enc_layers: int) -> float:
    """Millions of parameters of our model for this config (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = maskformer.build_model(config, num_classes=num_classes, enc_layers=enc_layers)
    return sum(p.numel() for p in model.parameters()) / 1e6


def table_rows() -> list[list[str]]:
    """One row of strings per published model, under `TABLE_HEADER`."""
    classes = {ADE: 150, COCO: 133}
    rows = []
    for m in MODELS:
        size = f"{m.size_mb} MB" if m.size_mb else "not listed"
        checked = "sha256" if m.files[0].sha256 else "md5" if m.files[0].md5 else "unchecked"
        rows.append([m.name, m.alias, maskformer.CONFIGS[m.config].backbone, m.dataset, m.crop,
                     f"{parameter_count(m.config, classes[m.dataset], m.enc_layers):.1f}M", m.metric, size, checked])
    return rows


TABLE_HEADER = ["name", "alias", "backbone", "dataset", "crop", "params", "paper (s.s.)", "download", "check"]


def print_table(file=None) -> None:
    """The published models as an aligned text table, then the ImageNet backbones (to `file` or stdout)."""
    file = file or sys.stdout
    rows = [TABLE_HEADER, *table_rows()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADER))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=file)
    print(f"\nImageNet backbones (train.py --weights imagenet), cached in {cache_root()}:", file=file)
    for e in IMAGENET:
        print(f"  {e.backbone:<11} {e.pretraining:<11} {e.file.url}", file=file)



def load_pretrained(model: nn.Module, path: str, log: Callable[[str], None]) -> None:
    """`train.py --weights`: a whole model or a backbone-only state dict (from tooling/convert.py or train.py).

    Tensors whose shapes differ from ours (a class head trained for another K) are re-initialised
    and reported; keys absent from the file keep their fresh initialisation and are reported.
    """
    ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict):
        raise SystemExit(f"error: {path} holds no state dict")
    missing, unknown, reshaped = conversion.key_differences(model, state)
    if len(unknown) == len(state):
        raise SystemExit(f"error: {path} matches none of this model's parameters "
                         f"(first keys: {list(state)[:3]}); convert it with tooling/convert.py first")
    usable = {k: v for k, v in state.items() if k not in unknown and k not in reshaped}
    if len(usable) < len(state) / 2:  # mostly another architecture: fine-tuning from it would be from scratch
        found = ckpt.get("config") if isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) else {}
        expected = getattr(getattr(model, "config", None), "__dict__", {})
        differences = config_differences(expected, found) if found else ""
        raise SystemExit(f"error: --weights {path} fits only {len(usable)} of its {len(state)} tensors into this "
                         f"model ({differences or f'e.g. {(reshaped or unknown)[0]}'}): a checkpoint of another "
                         f"config; pass the matching --config/--set or another file")
    model.load_state_dict(usable, strict=False)
    missing += reshaped  # re-initialised: they keep the fresh model's values
    log(f"loaded {len(usable)} tensors from {path}")
    if reshaped:
        log(f"re-initialised (shape differs, e.g. another class count): "
            f"{', '.join(conversion.shape_note(model, state, k) for k in reshaped)}")
    if missing:
        log(f"{len(missing)} tensors not in {path} keep their initialisation (e.g. {missing[0]})")
    if unknown:
        log(f"ignored {len(unknown)} tensors of {path} this model lacks (e.g. {unknown[0]})")


class MissingConfig(WeightsError):
    """A checkpoint without its "config" entry, read without a config name to build the model from."""


def load_weights(path: str | Path) -> tuple[dict, dict]:
    """(state_dict, the rest) of a checkpoint {"model": state_dict, "config": dict, ...} or a bare state dict;
    WeightsError naming the file otherwise."""
    try:
        checkpoint = read_checkpoint(path)  # weights only: tensors and plain containers, never code
    except CheckpointError as e:
        raise WeightsError(str(e)) from None
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path}: expected a dict, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: no state dict of tensors (under 'model' or at the top)")
    return state, checkpoint if "model" in checkpoint else {}


def check_state_dict(model: nn.Module, state: dict[str, Tensor], path: str | Path, description: str) -> None:
    """WeightsError with one line summarising missing / unexpected / reshaped keys if `state` does not fit `model`."""
    missing, unexpected, reshaped = conversion.key_differences(model, state)
    reshaped = [conversion.shape_note(model, state, k) for k in reshaped]
    problems = [f"{len(keys)} {kind} (e.g. {', '.join(keys[:2])})"
                for kind, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", reshaped))
                if keys]
    if problems:
        raise WeightsError(f"{path} does not fit {description}: {'; '.join(problems)}")


def read_model(path: str | Path, config_name: str | None = None,
               num_classes: int | None = None) -> tuple[nn.Module, list[str] | None, dict]:
    """The one model loader: (model with the file's weights, the class names the file carries or None,
    the checkpoint's other entries: "recipe", "args", ...). `path` is a checkpoint of ours (train.py,
    tooling.convert; the model built from its "config", or from `config_name` with its class count) or a
    Hugging Face model folder (renamed in memory by `conversion.load_hf_folder`). Every tensor must fit:
    WeightsError with `check_state_dict`'s one-line report otherwise."""
    path = Path(path)
    if path.is_dir():
        state, name, overrides, class_names = conversion.load_hf_folder(path)
        model = maskformer.build_model(name, num_classes=len(class_names), **overrides)
        check_state_dict(model, state, path, f"{name} (K={len(class_names)})")
        model.load_state_dict(state)
        return model, list(class_names), {}
    state, extras = load_weights(path)
    saved_config = extras.get("config") if isinstance(extras.get("config"), dict) else None
    if config_name is not None:
        K = (saved_config or {}).get("num_classes") or num_classes or 150
        model, description = maskformer.build_model(config_name, num_classes=K), f"--config {config_name} (K={K})"
        differences = config_differences(asdict(model.config), saved_config or {})
        description += f", whose {differences} in the file's config" if differences else ""
    elif saved_config is not None:
        known = {f.name for f in fields(maskformer.MaskFormerConfig)}
        try:
            config = maskformer.MaskFormerConfig(**{k: v for k, v in saved_config.items() if k in known})
            model = maskformer.MaskFormer(config)
        except (TypeError, ValueError) as e:
            raise WeightsError(f"{path}: its config cannot be built ({e})") from None
        description = f"its own config (backbone {config.backbone}, head {config.head})"
    else:
        raise MissingConfig(f"{path} holds no 'config' entry")
    check_state_dict(model, state, path, description)
    model.load_state_dict(state)
    class_names = extras.get("class_names")
    valid_names = isinstance(class_names, list) and len(class_names) == model.config.num_classes
    return model, list(map(str, class_names)) if valid_names else None, extras


def model_from_flags(args: argparse.Namespace, parser: argparse.ArgumentParser,
                     num_classes: int | None) -> tuple[nn.Module, list[str] | None, dict]:
    """infer.py's model: --config with random weights (--random-init), or `read_model` of --weights (a
    path or a published name, resolved first) with --config if given; errors as one line naming the flag."""
    if args.random_init:
        if args.weights is not None or args.config is None:
            parser.error("--random-init goes with --config and without --weights (random weights, for demos/tests)")
        return maskformer.build_model(args.config, num_classes=num_classes or 150), None, {}
    if args.weights is None:
        parser.error("--weights is required (or --config NAME --random-init for a model with random weights)")
    try:  # a published name: downloaded, checked and converted on first use, then read from the cache
        args.weights = resolve(args.weights, args.weights_mirror)
    except (WeightsError, conversion.ConversionError) as e:
        raise SystemExit(f"error: {e}") from None
    try:
        return read_model(args.weights, args.config, num_classes)
    except MissingConfig as e:
        parser.error(f"--config is required: {e}")
    except (WeightsError, conversion.ConversionError) as e:
        raise SystemExit(f"error: --weights {e}") from None
