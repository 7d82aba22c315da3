"""Tests for notebooks/: every notebook runs top to bottom, and every notebook is stored clean.

The notebooks run as a student runs them: a `python3` Jupyter kernel (nbclient), working
directory notebooks/, with MASKFORMER_NOTEBOOK_FAST=1 so that the training notebooks use tiny
budgets (CI has 2 CPU cores), and one torch thread (OMP_NUM_THREADS=1). Any cell error fails
the test with the cell's traceback.
Stored notebooks carry no outputs and no execution counts (clean diffs), open with a markdown
cell citing the paper (PAPER.md labels) and put the repository root on sys.path.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
EXPECTED = ["01_data", "02_model", "03_matching", "04_losses", "05_inference", "06_training", "07_pretrained"]
ALL_STORED = sorted(NOTEBOOKS.glob("*.ipynb")) + sorted((REPO / "exercises").glob("*.ipynb"))
PAPER_REFERENCE = re.compile(r"Eq\. \(3\.[1-4][a-g]\)|§[34]")


def execute_notebook(path: Path, env: dict[str, str] | None = None, timeout: int = 600):
    """Run the notebook at `path` in a fresh python3 kernel (cwd = its folder); returns the executed
    notebook. Raises nbclient's CellExecutionError on the first failing cell."""
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev requirement (requirements-dev.txt)")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is a dev requirement (requirements-dev.txt)")
    pytest.importorskip("ipykernel", reason="ipykernel is a dev requirement (requirements-dev.txt)")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no Jupyter kernel named python3: run `python -m ipykernel install --user --name python3`")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}})
    # One thread: the notebooks' models are tiny, and on a busy 2-core machine OpenMP threads waiting
    # for each other made them up to 8x slower in our measurements.
    env = {"OMP_NUM_THREADS": "1", **(env or {})}
    with mock.patch.dict(os.environ, env):  # the kernel inherits this process's environment
        client.execute()
    return nb


def test_the_notebooks_are_all_there():
    assert [p.stem for p in sorted(NOTEBOOKS.glob("*.ipynb"))] == EXPECTED


@pytest.mark.parametrize("path", ALL_STORED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stored_clean_with_paper_link_and_sys_path(path):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is a dev requirement (requirements-dev.txt)")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {index} has stored outputs (clear them before committing)"
            assert cell.execution_count is None, f"{path.name}: cell {index} has an execution count"
    first = nb.cells[0]
    assert first.cell_type == "markdown" and PAPER_REFERENCE.search(first.source), \
        f"{path.name}: the first cell must be markdown citing the paper (e.g. 'Eq. (3.2c)' or '§3.3')"
    setup = next(cell for cell in nb.cells if cell.cell_type == "code")
    assert "sys.path" in setup.source, f"{path.name}: the first code cell must put the repository root on sys.path"


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs_top_to_bottom(name):
    start = time.perf_counter()
    nb = execute_notebook(NOTEBOOKS / f"{name}.ipynb", env={"MASKFORMER_NOTEBOOK_FAST": "1"})
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name != "07_pretrained":  # 07 draws only when published weights are present
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{name}: no matplotlib figure"
    print(f"{name}: {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_pretrained_notebook_with_a_hugging_face_folder(tmp_path):
    """07 with a Hugging Face model folder, as a user downloads it (random weights, built offline)."""
    transformers = pytest.importorskip("transformers", reason="transformers builds the stand-in HF folder")
    backbone = transformers.ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                                         out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.MaskFormerConfig(
        backbone_config=backbone, num_labels=3, id2label={0: "wall", 1: "floor", 2: "person"},
        fpn_feature_size=64, mask_feature_size=64,
        decoder_config=dict(model_type="detr", d_model=64, decoder_layers=2, decoder_attention_heads=4,
                            decoder_ffn_dim=128, num_queries=10))
    transformers.MaskFormerForInstanceSegmentation(config).save_pretrained(tmp_path / "hf")
    from PIL import Image

    import data

    photo = data.denormalize(data.build_dataset("shapes", split="val")[0]["image"])  # (128, 128, 3)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    env = {"MASKFORMER_HF_WEIGHTS": str(tmp_path / "hf"), "MASKFORMER_PHOTO": str(tmp_path / "photo.png")}
    nb = execute_notebook(NOTEBOOKS / "07_pretrained.ipynb", env=env)
    outputs = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "loaded hf: backbone resnet18, 3 classes" in text and "photo: (128, 128, 3)" in text
    assert "skipped" not in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the overlay and the queries
