"""Tests for notebooks/: stored executed (figures visible when browsing), and re-executed top to bottom.

The stored notebooks carry the outputs of `python notebooks/run_all.py`: every code cell ran, in order, no
cell stored an error, every notebook shows at least one figure. CI re-executes each one as a student runs
it (a `python3` Jupyter kernel, working directory notebooks/, one torch thread) with
MASKFORMER_NOTEBOOK_FAST=1, the notebooks' switch to tiny training budgets; the narrative asserts inside the
notebooks (the objects, counts and comparisons their text names) run in both modes, so a change in the
generator or the model that falsifies a sentence fails here. exercises/ notebooks are stored clean (no
outputs) for students to fill in.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import data
from machinery import datasets

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
EXPECTED = ["01_data", "02_model", "03_matching", "04_losses", "05_inference", "06_training", "07_pretrained",
            "08_queries"]
STORED = sorted(NOTEBOOKS.glob("*.ipynb"))
EXERCISES = sorted((REPO / "exercises").glob("*.ipynb"))
SAFETENSORS = "model.safetensors"
PAPER_REFERENCE = re.compile(r"Eq\. \(3\.[1-4][a-g]\)|§[34]")


def read(path: Path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev requirement (requirements-dev.txt)")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    return nb


def outputs_of(nb) -> list:
    return [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]


def figures(nb) -> int:
    return sum("image/png" in output.get("data", {}) for output in outputs_of(nb))


def run_all_module():
    spec = importlib.util.spec_from_file_location("run_all", NOTEBOOKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def execute(path: Path, env: dict[str, str] | None = None):
    """Execute as `notebooks/run_all.py` does; skips (with the fix) where the dev tools are missing."""
    pytest.importorskip("nbclient", reason="nbclient is a dev requirement (requirements-dev.txt)")
    pytest.importorskip("ipykernel", reason="ipykernel is a dev requirement (requirements-dev.txt)")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3: run `python -m ipykernel install --user --name python3`")
    return run_all_module().execute(path, env=env)


def test_the_notebooks_are_all_there():
    assert [p.stem for p in STORED] == EXPECTED


@pytest.mark.parametrize("path", STORED, ids=lambda p: p.name)
def test_stored_executed_with_figures_and_no_error(path):
    nb = read(path)
    assert nb.metadata.kernelspec.name == "python3"
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert None not in counts, f"{path.name}: stored without outputs; run `python notebooks/run_all.py {path.stem[:2]}`"
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: cells were not run top to bottom in one go"
    errors = [o for o in outputs_of(nb) if o.output_type == "error"]
    assert not errors, f"{path.name}: a stored cell failed: {errors[0].ename}: {errors[0].evalue}"
    assert figures(nb) >= 1, f"{path.name}: no figure stored"


@pytest.mark.parametrize("path", STORED + EXERCISES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_opens_with_the_paper_and_sys_path(path):
    nb = read(path)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and PAPER_REFERENCE.search(first.source), \
        f"{path.name}: the first cell must be markdown citing the paper (e.g. 'Eq. (3.2c)' or '§3.3')"
    setup = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "sys.path" in setup.source, f"{path.name}: the first code cell must put the repository root on sys.path"


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.name)
def test_exercises_stored_clean(path):
    for index, cell in enumerate(read(path).cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {index} has stored outputs (clear them before committing)"
            assert cell.execution_count is None, f"{path.name}: cell {index} has an execution count"


def test_the_stored_checks_fail_on_a_notebook_without_outputs(tmp_path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev requirement (requirements-dev.txt)")
    nb = read(NOTEBOOKS / "05_inference.ipynb")
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, tmp_path / "05_inference.ipynb")
    with pytest.raises(AssertionError, match="stored without outputs"):
        test_stored_executed_with_figures_and_no_error(tmp_path / "05_inference.ipynb")


def offline_weights(tmp_path: Path) -> dict[str, str]:
    """07 without network: an empty torch hub cache and a mirror folder that does not exist (fails at once)."""
    return {"TORCH_HOME": str(tmp_path / "torch"), "MASKFORMER_WEIGHTS_MIRROR": (tmp_path / "no-mirror").as_uri()}


def stream_text(nb) -> str:
    return "".join(o.get("text", "") for o in outputs_of(nb) if o.output_type == "stream")


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    start = time.perf_counter()
    env = {"MASKFORMER_NOTEBOOK_FAST": "1", **(offline_weights(tmp_path) if name == "07_pretrained" else {})}
    nb = execute(NOTEBOOKS / f"{name}.ipynb", env=env)
    assert not [o for o in outputs_of(nb) if o.output_type == "error"]
    assert figures(nb) >= 1, f"{name}: no matplotlib figure"
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    if name == "07_pretrained":  # offline: the one-line reason, then every later cell skips
        missing = tmp_path / "torch" / "hub" / "checkpoints" / "maskformer" / "maskformer-swin-tiny-ade" / SAFETENSORS
        load_cell = next(cell for cell in nb.cells if "weights.load_model(WEIGHTS)" in cell.source)
        reason, skipped = "".join(o.get("text", "") for o in load_cell.outputs).splitlines()
        assert skipped.startswith("no weights: the rest of this notebook is skipped")
        assert reason.startswith(f"cannot download {(tmp_path / 'no-mirror').as_uri()}/maskformer-swin-tiny-ade/"
                                 f"{SAFETENSORS} (") and f"put it at {missing}," in reason
        assert stream_text(nb).count("skipped (no weights)") == 2 and figures(nb) == 1  # the photo only


def small_hugging_face_model(folder: Path, weights_file: str = SAFETENSORS) -> None:
    """A random MaskFormer in the Hugging Face port's format (ResNet-18, 3 classes, 10 queries) at `folder`:
    config.json and `weights_file`, model.safetensors or pytorch_model.bin (a torch.save of the state dict)."""
    transformers = pytest.importorskip("transformers", reason="transformers builds the stand-in HF folder")
    backbone = transformers.ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                                         out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.MaskFormerConfig(
        backbone_config=backbone, num_labels=3, id2label={0: "wall", 1: "floor", 2: "person"},
        fpn_feature_size=64, mask_feature_size=64,
        decoder_config=dict(model_type="detr", d_model=64, decoder_layers=2, decoder_attention_heads=4,
                            decoder_ffn_dim=128, num_queries=10))
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)  # the port's random initialisation: the same stand-in on every run
    model = transformers.MaskFormerForInstanceSegmentation(config)
    model.save_pretrained(folder)  # recent releases write model.safetensors only
    if weights_file != SAFETENSORS:
        torch.save(model.state_dict(), folder / weights_file)
        (folder / SAFETENSORS).unlink()


def run_pretrained_notebook(tmp_path: Path, env: dict[str, str]):
    """07 on a 128 × 128 `shapes` image; checks what every run with weights shows, returns the stream text."""
    photo = data.denormalize(datasets.build_dataset("shapes", split="val")[0]["image"])  # (128, 128, 3)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    nb = execute(NOTEBOOKS / "07_pretrained.ipynb", env={"MASKFORMER_PHOTO": str(tmp_path / "photo.png"), **env})
    text = stream_text(nb)
    assert "backbone resnet18, 3 classes, 10 queries" in text and "photo: (128, 128, 3)" in text
    assert "skipped" not in text and "of 10 queries predict ∅" in text
    assert figures(nb) == 3  # the photo, the overlay and the queries
    return text


def test_pretrained_notebook_by_name_through_a_mirror(tmp_path):
    """07 by published name, fetched from a file:// mirror into an empty cache, converted, run on the photo.

    The entry served is a Hugging Face row whose publisher gives no digest (so a random stand-in passes
    the check); the download, conversion and cache are those of a real name."""
    from machinery import weights

    entry = next(m for m in weights.MODELS if m.source == "hf" and all(f.sha256 is None for f in m.files))
    small_hugging_face_model(tmp_path / "mirror" / entry.name, entry.files[0].filename)
    env = {"MASKFORMER_WEIGHTS": entry.alias, "TORCH_HOME": str(tmp_path / "torch"),
           "MASKFORMER_WEIGHTS_MIRROR": (tmp_path / "mirror").as_uri()}
    text = run_pretrained_notebook(tmp_path, env)
    converted = tmp_path / "torch" / "hub" / "checkpoints" / "maskformer" / entry.name / "converted.pt"
    assert f"downloading {(tmp_path / 'mirror').as_uri()}/{entry.name}/{entry.files[0].filename}" in text
    assert f"cached at {converted})" in text and converted.is_file()
    assert f"loaded {entry.alias}: backbone resnet18" in text


def test_pretrained_notebook_with_a_hugging_face_folder(tmp_path):
    """07 with a Hugging Face model folder, as a user downloads it by hand (random weights, built offline)."""
    small_hugging_face_model(tmp_path / "hf")
    text = run_pretrained_notebook(tmp_path, {"MASKFORMER_WEIGHTS": str(tmp_path / "hf"), **offline_weights(tmp_path)})
    assert "loaded hf: backbone resnet18" in text and "downloading" not in text
