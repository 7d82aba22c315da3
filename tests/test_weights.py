"""machinery/weights.py: published checkpoints by name, downloaded once, checked, converted and cached.

No test touches the network: small random checkpoints in the published formats (a Hugging Face
folder written by transformers' own `save_pretrained`, a torchvision / Microsoft Swin ImageNet
file in the layouts tests/test_convert.py writes out) are served from a local folder through a
`file://` mirror, the same code path as a real download. The table entries are replaced by test
entries pointing at those files (the real ones name files of hundreds of MB).
"""

from __future__ import annotations

import hashlib
import math
import urllib.error
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import backbones
import infer
import maskformer
from machinery import conversion, datasets, weight_files, weights
from tests import hf_reference
from tests.test_convert import MINI_SWIN, microsoft_swin_layout, randomise, torchvision_resnet_layout
from tooling import fetch

K = 5


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh torch hub cache per test, and no mirror from the environment."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    return tmp_path / "hub" / "checkpoints" / "maskformer"


@pytest.fixture(scope="module")
def hf_tiny():
    """The Hugging Face port of our `tiny` config (K = 5), every tensor random and O(1)."""
    why = hf_reference.why_unavailable()
    if why:
        pytest.skip(why)
    return randomise(hf_reference.maskformer_port(replace(maskformer.CONFIGS["tiny"], num_classes=K)))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hf_entry(mirror: Path, hf, sha256: str | None = "from file") -> weights.Published:
    """Write `hf` as a Hub folder (model.safetensors + config.json) under the mirror; its table entry."""
    hf.save_pretrained(mirror / "test-tiny-ade", safe_serialization=True)
    weights_file = mirror / "test-tiny-ade" / "model.safetensors"
    digest = sha256_of(weights_file) if sha256 == "from file" else sha256
    base = "https://huggingface.co/facebook/test-tiny-ade/resolve/main"
    return weights.Published("test-tiny-ade", "tt-ade", "hf", "tiny", weights.ADE, "512", "mIoU 0.0", 1,
                             (weights.Download(f"{base}/model.safetensors", sha256=digest),
                              weights.Download(f"{base}/config.json")))


def test_published_name_converts_to_the_hugging_face_function(hf_tiny, tmp_path, cache, monkeypatch):
    """name → file:// mirror → checked → converted → cached: our model computes the HF port's outputs."""
    entry = hf_entry(tmp_path / "mirror", hf_tiny)
    monkeypatch.setattr(weights, "MODELS", (entry,))
    lines = []
    path = weights.resolve("TT-ADE", mirror=(tmp_path / "mirror").as_uri(), log=lines.append)
    assert Path(path) == cache / "test-tiny-ade" / "converted.pt"
    assert (cache / "test-tiny-ade" / "model.safetensors").read_bytes() == \
        (tmp_path / "mirror" / "test-tiny-ade" / "model.safetensors").read_bytes()
    assert any(line.startswith("downloading file://") for line in lines)

    state, extras = weights.load_weights(path)
    model = maskformer.MaskFormer(maskformer.MaskFormerConfig(**extras["config"])).eval()
    model.load_state_dict(state, strict=True)
    assert extras["class_names"] == [hf_tiny.config.id2label[i] for i in range(K)]
    assert extras["recipe"] == datasets.published_recipe(extras["config"])  # as tooling/convert.py writes it
    images = torch.randn(1, 3, 97, 130, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(images), hf_tiny(pixel_values=images)
    assert ours["pred_masks"].std() > 0.1  # a non-flat function, so equality means something
    torch.testing.assert_close(ours["pred_logits"], theirs.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["pred_masks"], theirs.masks_queries_logits, atol=1e-4, rtol=1e-4)


def test_load_model_and_the_cli_by_name(hf_tiny, tmp_path, monkeypatch, capsys):
    """weights.load_model (notebooks) gives the HF port's function; `python -m tooling.fetch NAME`
    prints the path."""
    monkeypatch.setattr(weights, "MODELS", (hf_entry(tmp_path / "mirror", hf_tiny),))
    fetch.main(["tt-ade", "--mirror", (tmp_path / "mirror").as_uri()])
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == weights.resolve("tt-ade") and Path(path).is_file()
    model, names = weights.load_model("tt-ade")
    assert not model.training and names == [hf_tiny.config.id2label[i] for i in range(K)]
    images = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(images)["pred_masks"], hf_tiny(pixel_values=images).masks_queries_logits,
                                   atol=1e-4, rtol=1e-4)


def test_load_model_reads_a_hugging_face_folder_as_downloaded_by_hand(hf_tiny, tmp_path, cache):
    """A folder path (config.json + pytorch_model.bin) gives the HF port's function; nothing is cached."""
    hf_tiny.save_pretrained(tmp_path / "by hand")  # recent transformers write model.safetensors only
    torch.save(hf_tiny.state_dict(), tmp_path / "by hand" / "pytorch_model.bin")  # the .bin of older uploads
    (tmp_path / "by hand" / "model.safetensors").unlink()
    model, names = weights.load_model(str(tmp_path / "by hand"), log=lambda _: pytest.fail("logged a download"))
    assert not model.training and names == [hf_tiny.config.id2label[i] for i in range(K)]
    images = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(images), hf_tiny(pixel_values=images)
    torch.testing.assert_close(ours["pred_logits"], theirs.class_queries_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["pred_masks"], theirs.masks_queries_logits, atol=1e-4, rtol=1e-4)
    assert not cache.exists()


def test_load_model_of_a_missing_path_is_one_line(tmp_path):
    with pytest.raises(weights.WeightsError) as e:
        weights.load_model(str(tmp_path / "nowhere" / "maskformer-swin-tiny-ade"))
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'nowhere'}") and "no such file or folder" in message


def test_second_call_reads_the_converted_cache(hf_tiny, tmp_path, monkeypatch):
    """The second resolve neither downloads (the mirror is gone) nor converts (convert_file fails)."""
    monkeypatch.setattr(weights, "MODELS", (hf_entry(tmp_path / "mirror", hf_tiny),))
    first = weights.resolve("test-tiny-ade", mirror=(tmp_path / "mirror").as_uri(), log=lambda _: None)
    stamp = Path(first).stat().st_mtime_ns
    for f in (tmp_path / "mirror" / "test-tiny-ade").iterdir():
        f.unlink()

    def no_second_conversion(*args):
        raise AssertionError("converted twice")

    monkeypatch.setattr(conversion, "convert_file", no_second_conversion)
    lines = []
    assert weights.resolve("test-tiny-ade", log=lines.append) == first
    assert lines == [] and Path(first).stat().st_mtime_ns == stamp


def test_local_path_is_returned_unchanged(tmp_path):
    """Paths go to the caller's reader (which reports a missing file); no download is attempted."""
    checkpoint = tmp_path / "mine.pt"
    checkpoint.write_bytes(b"x")
    assert weights.resolve(str(checkpoint)) == str(checkpoint)
    assert weights.resolve(str(tmp_path / "missing.pt")) == str(tmp_path / "missing.pt")
    assert weights.resolve("best.pt") == "best.pt"


def test_unknown_name_lists_the_aliases():
    with pytest.raises(weights.WeightsError) as e:
        weights.resolve("maskformer-swin-huge-ade")
    message = str(e.value)
    assert "\n" not in message and "swin-t-ade" in message and "r50-coco" in message


def test_wrong_sha256_fails_in_one_line_and_keeps_nothing(hf_tiny, tmp_path, cache, monkeypatch):
    monkeypatch.setattr(weights, "MODELS", (hf_entry(tmp_path / "mirror", hf_tiny, sha256="00" * 32),))
    with pytest.raises(weights.WeightsError) as e:
        weights.resolve("test-tiny-ade", mirror=(tmp_path / "mirror").as_uri(), log=lambda _: None)
    message = str(e.value)
    actual = sha256_of(tmp_path / "mirror" / "test-tiny-ade" / "model.safetensors")
    assert "\n" not in message and "SHA-256" in message and actual[:16] in message
    assert not (cache / "test-tiny-ade" / "model.safetensors").exists()  # moved aside to .bad
    assert (cache / "test-tiny-ade" / "model.safetensors.bad").exists()
    assert not (cache / "test-tiny-ade" / "converted.pt").exists()


def test_md5_prefix_of_the_model_zoo_is_checked(tmp_path):
    """The official zoo's file names end in their MD5's first 6 hex digits: a match passes, else not."""
    path = tmp_path / "model_final_x.pkl"
    path.write_bytes(b"MaskFormer")
    md5 = hashlib.md5(b"MaskFormer").hexdigest()
    weights.check_file(path, weights.Download("https://x/model_final_x.pkl", md5=md5[:6]))
    assert path.exists()
    with pytest.raises(weights.WeightsError, match="MD5"):
        weights.check_file(path, weights.Download("https://x/model_final_x.pkl", md5="ffffff" if md5[0] != "f"
                                                  else "000000"))


def test_offline_names_the_url_and_the_cache_path(cache, monkeypatch):
    """No network: one line with the publisher's URL and the exact path to put the file at."""
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    lines = []
    with pytest.raises(weights.WeightsError) as e:
        weights.resolve("swin-t-ade", log=lines.append)
    message = str(e.value)
    assert lines == []  # no "downloading" line for a download that never started: the error is the one line
    expected_path = cache / "maskformer-swin-tiny-ade" / "model.safetensors"
    assert "\n" not in message and "Network is unreachable" in message
    assert "https://huggingface.co/facebook/maskformer-swin-tiny-ade/resolve/main/model.safetensors" in message
    assert str(expected_path) in message and weights.MIRROR_ENV in message
    assert not expected_path.exists() and not expected_path.with_name("model.safetensors.part").exists()


def test_mirror_from_the_environment(tmp_path, monkeypatch):
    """MASKFORMER_WEIGHTS_MIRROR replaces the publisher: <mirror>/<name>/<file>."""
    monkeypatch.setenv(weights.MIRROR_ENV, "https://mirror.example/maskformer/")
    file = weights.Download("https://huggingface.co/facebook/x/resolve/main/model.safetensors")
    assert weights.source_url(file, "x/model.safetensors", None) == \
        "https://mirror.example/maskformer/x/model.safetensors"
    assert weights.source_url(file, "x/model.safetensors", "file:///w") == "file:///w/x/model.safetensors"
    monkeypatch.delenv(weights.MIRROR_ENV)
    assert weights.source_url(file, "x/model.safetensors", None) == file.url


# ---------------------------------------------------------------------------------------------
# ImageNet backbones
# ---------------------------------------------------------------------------------------------


def imagenet_case(kind: str, mirror: Path, monkeypatch) -> tuple[str, dict[str, torch.Tensor]]:
    """An official-format ImageNet file on the mirror and its table entry → (backbone, source tensors)."""
    if kind == "torchvision":
        backbone, source = "resnet18", torchvision_resnet_layout(False, [2, 2, 2, 2])
        # convolutions scaled to N(0, 1/fan_in), as trained weights roughly are: finite activations
        source = {k: v / math.sqrt(v[0].numel()) if v.dim() == 4 else v for k, v in source.items()}
        filename, keep = "resnet18-{}.pth", lambda k: not k.startswith("fc.") and "num_batches" not in k
    else:
        monkeypatch.setitem(backbones.SWINS, "swin_mini", MINI_SWIN)
        sizes = {k: v for k, v in MINI_SWIN.items() if k != "window_size"}
        backbone, source = "swin_mini", microsoft_swin_layout(window=7, **sizes)
        filename, keep = "swin_mini_patch4_window7_224{}.pth", \
            lambda k: k.startswith(("patch_embed", "layers")) and not k.endswith("attn_mask")
    folder = mirror / f"imagenet-{backbone}"
    folder.mkdir(parents=True)
    torch.save(source, folder / "file.pth")
    prefix = sha256_of(folder / "file.pth")[:8] if kind == "torchvision" else None
    name = filename.format(f"-{prefix}" if prefix else "")
    (folder / "file.pth").rename(folder / name)
    entry = weights.ImageNet(backbone, kind, "IN-1k 224", weights.Download(f"https://example.org/{name}", prefix))
    monkeypatch.setattr(weights, "IMAGENET", (entry,))
    tensors = source.get("model", source)
    return backbone, {f"backbone.{k}": v for k, v in tensors.items() if keep(k)}


@pytest.mark.parametrize("kind", ["torchvision", "swin"])
def test_imagenet_backbone_equals_the_file(kind, tmp_path, monkeypatch):
    """--weights imagenet: the loaded backbone tensors are the file's; the rest keeps its init; one line."""
    backbone, expected = imagenet_case(kind, tmp_path / "mirror", monkeypatch)
    config = "tiny" if backbone == "resnet18" else "swin_t"
    overrides = {"backbone_kwargs": {"width": 64, "norm": "frozen_bn"}} if backbone == "resnet18" \
        else {"backbone": backbone}
    torch.manual_seed(0)
    model = maskformer.build_model(config, num_classes=K, **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lines = []
    weights.load_imagenet(model, mirror=(tmp_path / "mirror").as_uri(), log=lines.append)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())
    untouched = [k for k in state if k not in expected]
    assert all(torch.equal(state[k], before[k]) for k in untouched)
    summary = [line for line in lines if line.startswith("ImageNet weights")]
    assert len(summary) == 1 and f"{len(expected)} tensors loaded" in summary[0]
    assert f"{len(untouched)} left at their random initialisation" in summary[0]


def test_imagenet_for_a_backbone_without_weights():
    with pytest.raises(weights.WeightsError, match="no ImageNet weights are published for resnet18"):
        weights.imagenet_checkpoint("resnet18")


# ---------------------------------------------------------------------------------------------
# .safetensors reader
# ---------------------------------------------------------------------------------------------


def test_safetensors_reader_equals_the_reference(tmp_path):
    """Our reader against the `safetensors` package on every dtype, a scalar and an empty tensor."""
    st = pytest.importorskip("safetensors.torch", reason="the safetensors package is the reference")
    g = torch.Generator().manual_seed(0)
    tensors = {"f32": torch.randn(3, 4, generator=g), "f16": torch.randn(5, generator=g).half(),
               "bf16": torch.randn(2, 3, generator=g).bfloat16(), "f64": torch.randn(2, generator=g).double(),
               "i64": torch.arange(-3, 3), "i32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
               "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}
    st.save_file(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    ours, theirs = weight_files.read_safetensors(tmp_path / "t.safetensors"), st.load_file(tmp_path / "t.safetensors")
    assert ours.keys() == theirs.keys() == tensors.keys()
    for k in tensors:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape
        assert torch.equal(ours[k], theirs[k])


def test_safetensors_reader_rejects_a_torn_file(tmp_path):
    """A hand-written file (8-byte length, JSON header, raw little-endian bytes), then cut short."""
    values = np.array([1.0, -2.0, 3.5], dtype="<f4")
    header = b'{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}'
    blob = len(header).to_bytes(8, "little") + header + values.tobytes()
    (tmp_path / "ok.safetensors").write_bytes(blob)
    assert weight_files.read_safetensors(tmp_path / "ok.safetensors")["x"].tolist() == [1.0, -2.0, 3.5]
    (tmp_path / "torn.safetensors").write_bytes(blob[:-4])
    with pytest.raises(conversion.ConversionError) as e:
        weight_files.read_safetensors(tmp_path / "torn.safetensors")
    assert "\n" not in str(e.value) and "[0, 12)" in str(e.value)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


def test_table_lists_every_model_with_our_parameter_count(capsys):
    """--list: one row per model; params are those of our model (the HF port's count for Swin-T / R50)."""
    weights.print_table()
    out = capsys.readouterr().out
    for m in weights.MODELS:
        assert m.name in out and m.alias in out and m.metric in out
    rows = {r[0]: r for r in weights.table_rows()}
    # REFERENCE counts of the HF port with 150 classes: Swin-T 41.76M, R50 41.31M (ours freezes BN: same)
    assert rows["maskformer-swin-tiny-ade"][5] == "41.8M" and rows["maskformer_R50_bs16_160k"][5] == "41.3M"
    aliases = [m.alias for m in weights.MODELS] + [m.name for m in weights.MODELS]
    assert len({a.lower() for a in aliases}) == len(aliases)  # every name and alias is unique


def test_parameter_count_equals_a_built_model():
    built = maskformer.build_model("swin_t", num_classes=133)
    assert math.isclose(weights.parameter_count("swin_t", 133, 0),
                        sum(p.numel() for p in built.parameters()) / 1e6)


# ---------------------------------------------------------------------------------------------
# infer.py and train.py by name
# ---------------------------------------------------------------------------------------------


def test_infer_by_name_writes_the_label_map_of_the_converted_model(hf_tiny, tmp_path, monkeypatch):
    """`infer.py --weights NAME` (mirror from the environment) = the converted checkpoint's prediction."""
    from PIL import Image

    monkeypatch.setattr(weights, "MODELS", (hf_entry(tmp_path / "mirror", hf_tiny),))
    monkeypatch.setenv(weights.MIRROR_ENV, (tmp_path / "mirror").as_uri())
    rgb = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    common = ["--input", str(tmp_path / "photo.png"), "--device", "cpu"]
    infer.main(["--weights", "tt-ade", "--output", str(tmp_path / "by_name"), *common])
    path = weights.resolve("tt-ade")
    infer.main(["--weights", path, "--output", str(tmp_path / "by_path"), *common])
    by_name = np.array(Image.open(tmp_path / "by_name" / "photo.png"))
    assert by_name.shape == (70, 90) and (tmp_path / "by_name" / "photo_overlay.png").is_file()
    assert np.array_equal(by_name, np.array(Image.open(tmp_path / "by_path" / "photo.png")))


def test_infer_list_prints_the_table(capsys):
    assert infer.main(["--list"]) is None
    out = capsys.readouterr().out
    assert all(m.name in out and m.alias in out for m in weights.MODELS) and "ImageNet backbones" in out


def test_infer_offline_is_one_line(cache, monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    from PIL import Image

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    with pytest.raises(SystemExit) as e:
        infer.main(["--weights", "swin-t-ade", "--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "o"),
                    "--device", "cpu"])
    message = str(e.value)
    assert message.startswith("error: cannot download https://huggingface.co/") and "\n" not in message
    assert str(cache / "maskformer-swin-tiny-ade" / "model.safetensors") in message


def test_train_defaults_to_imagenet_for_paper_configs_on_real_data():
    import train

    def default(*argv):
        args = train.parse_args(list(argv))
        return train.initial_weights(args, train.resolve_recipe(args))

    assert default("--data", "ade20k") == "imagenet"  # r50, the recipe's config
    assert default("--data", "coco_panoptic", "--config", "swin_t") == "imagenet"
    assert default("--data", "ade20k", "--config", "tiny") == "none"
    assert default("--data", "shapes") == "none" and default("--data", "shapes", "--config", "r50") == "none"
    assert default("--data", "ade20k", "--weights", "none") == "none"


@pytest.mark.parametrize("choice", ["imagenet", "none"])
def test_train_logs_what_it_starts_from(choice, tmp_path, monkeypatch, capsys):
    """One iteration on shapes with an ImageNet-width `tiny` (frozen BN): the log line; the backbone the
    file's, everything else as initialised."""
    import train

    backbone, expected = imagenet_case("torchvision", tmp_path / "mirror", monkeypatch)
    monkeypatch.setenv(weights.MIRROR_ENV, (tmp_path / "mirror").as_uri())
    seen = {}
    load = train.load_initial_weights

    def keep_states(model, *args):
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        load(model, *args)
        seen["after"] = {k: v.clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(train, "load_initial_weights", keep_states)
    train.main(["--config", "tiny", "--set", "backbone_kwargs={'width': 64, 'norm': 'frozen_bn'}",
                "--crop-size", "64", "--batch-size", "2", "--iters", "1", "--eval-period", "1", "--val-images", "2",
                "--workers", "0", "--no-progress", "--threads", "1", "--weights", choice,
                "--output", str(tmp_path / "run")])
    out = capsys.readouterr().out
    if choice == "none":
        assert "--weights none" in out and "ImageNet weights" not in out
        assert all(torch.equal(v, seen["before"][k]) for k, v in seen["after"].items())
        return
    assert len([line for line in out.splitlines() if line.startswith("ImageNet weights")]) == 1
    before, after = seen["before"], seen["after"]
    assert all(torch.equal(after[k], v) for k, v in expected.items())
    assert all(torch.equal(after[k], before[k]) for k in after if k not in expected)


# ---------------------------------------------------------------------------------------------
# R101c: the official model-zoo checkpoint and detectron2's ImageNet pickle (R-103.pkl)
# ---------------------------------------------------------------------------------------------


def detectron2_resnet_name(ours: str) -> str:
    """A torchvision-style backbone name → detectron2's, by the string replacements of the official
    tools/convert-torchvision-to-d2.py (stem. prefix, layerN → res{N+1}, bnK → convK.norm,
    downsample.0/1 → shortcut / shortcut.norm)."""
    k = ours if "layer" in ours else "stem." + ours
    for t in (1, 2, 3, 4):
        k = k.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        k = k.replace(f"bn{t}", f"conv{t}.norm")
    return k.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def test_official_r101c_checkpoint_by_name(tmp_path, monkeypatch):
    """A random R101c MaskFormer in the official layout (three stem convs under backbone.stem) →
    served as model_final_<md5>.pkl → resolve → the very same tensors, config r101c."""
    from tests.test_convert import SMALL_HEAD, official_layout, write_pickle

    model = randomise(maskformer.build_model("r101c", num_classes=K, **SMALL_HEAD))
    head = {k: v for k, v in official_layout(model).items() if not k.startswith("backbone.")}
    layout = {**head, **{"backbone." + detectron2_resnet_name(k[len("backbone."):]): v.numpy()
                         for k, v in model.state_dict().items() if k.startswith("backbone.")}}
    assert layout["backbone.stem.conv1.weight"].shape == (64, 3, 3, 3)
    assert layout["backbone.stem.conv3.norm.running_var"].shape == (128,)
    assert layout["backbone.res2.0.conv1.weight"].shape == (64, 128, 1, 1)  # res2 reads the 128-channel stem
    assert layout["backbone.res2.0.shortcut.weight"].shape == (256, 128, 1, 1)
    folder = tmp_path / "mirror" / "maskformer_R101c_bs16_160k"
    folder.mkdir(parents=True)
    write_pickle(folder / "model.pkl", layout)
    md5 = hashlib.md5((folder / "model.pkl").read_bytes()).hexdigest()[:6]
    (folder / "model.pkl").rename(folder / f"model_final_{md5}.pkl")
    entry = weights._zoo("maskformer_R101c_bs16_160k", "r101c-ade", "r101c", weights.ADE, "512", "mIoU 46.0", md5)
    monkeypatch.setattr(weights, "MODELS", (entry,))
    state, extras = weights.load_weights(weights.resolve("r101c-ade", (tmp_path / "mirror").as_uri(), log=print))
    expected = model.state_dict()
    assert extras["config"]["backbone"] == "resnet101c" and state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)


def test_r101c_imagenet_pickle_fills_the_backbone(tmp_path, monkeypatch):
    """R-103.pkl's layout (convert-torchvision-to-d2.py names, numpy arrays, stem.fc classifier) →
    --weights imagenet for r101c: every backbone tensor is the file's."""
    from tests.test_convert import write_pickle

    g = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in backbones.build_backbone("resnet101c").state_dict().items()}
    source = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    source.update({"fc.weight": torch.randn(1000, 2048, generator=g), "fc.bias": torch.randn(1000, generator=g)})
    folder = tmp_path / "mirror" / "imagenet-resnet101c"
    folder.mkdir(parents=True)
    write_pickle(folder / "R-103.pkl", {detectron2_resnet_name(k): v.numpy() for k, v in source.items()})
    entry = weights.ImageNet("resnet101c", "d2-imagenet", "IN-1k 224",
                             weights.Download("https://dl.fbaipublicfiles.com/detectron2/DeepLab/R-103.pkl"))
    monkeypatch.setattr(weights, "IMAGENET", (entry,))
    model = maskformer.build_model("r101c", num_classes=K)
    lines = []
    weights.load_imagenet(model, mirror=(tmp_path / "mirror").as_uri(), log=lines.append)
    state = model.state_dict()
    backbone = {k for k in state if k.startswith("backbone.")}
    assert backbone == {f"backbone.{k}" for k in source if not k.startswith("fc.")}
    assert all(torch.equal(state[k], source[k[len("backbone."):]]) for k in backbone)
    assert any(line.startswith("ImageNet weights (R-103.pkl, cached at ") and f"{len(backbone)} tensors loaded" in line
               for line in lines)


def test_train_offline_names_the_imagenet_url_and_path(cache, monkeypatch, tmp_path):
    """`train.py --config r50` without network and without a cached file: one line, URL and exact path."""
    import train

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit) as e:
        train.main(["--config", "r50", "--weights", "imagenet", "--crop-size", "64", "--batch-size", "2",
                    "--iters", "1", "--workers", "0", "--no-progress", "--output", str(tmp_path / "run")])
    message = str(e.value)
    assert message.startswith("error: cannot download https://download.pytorch.org/models/resnet50-0676ba61.pth")
    assert str(cache / "imagenet-resnet50" / "resnet50-0676ba61.pth") in message and "\n" not in message
