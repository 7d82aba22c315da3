"""Tests for tooling/benchmark.py: it runs end to end on the `tiny` config and reports sane figures.

No timing assertions (the machine is shared and timings are noise): the checks are that every
figure is a finite positive number, that derived figures agree with the timings they come from,
that the HF port is built with our sizes (equal parameter counts), that the random targets are a
partition of the image, and that the peak-memory probe sees memory a known tensor takes.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import maskformer
from tests import hf_reference
from tooling import benchmark, flops, timing, training_speed

SIZE = 64  # small images: the whole file runs in a few seconds


def finite_positive(x) -> bool:
    return isinstance(x, float | int) and math.isfinite(x) and x > 0


def test_tiny_run_prints_and_writes_the_table(tmp_path, capsys):
    use_hf = hf_reference.why_unavailable() is None
    out = tmp_path / "bench.json"
    argv = ["--configs", "tiny", "--repeats", "1", "--warmup", "0", "--size", str(SIZE), "--device", "cpu",
            "--no-memory", "--no-flops-table", "--data-workers", "--json", str(out)]
    results = benchmark.main(argv + ([] if use_hf else ["--no-hf"]))
    printed = capsys.readouterr().out

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # what was returned was written
    machine = results["machine"]
    assert machine["torch"] == torch.__version__ and machine["threads"] == torch.get_num_threads()
    assert machine["dtype"] == "float32" and machine["cpu"]
    peak_tflops = machine["mfu_reference_tflops"]  # measured matmul / conv: 1 GFLOP/s .. 100 TFLOP/s
    assert 1e-3 < peak_tflops < 100 and "measured" in machine["mfu_reference"]

    labels = [row["variant"] for row in results["speed"]]
    assert labels == ["ours", "ours (no aux loss)"] + (["HF", "HF channels_last"] if use_hf else [])
    gflops = flops.count_flops(maskformer.build_model("tiny").eval(), SIZE)
    for row in results["speed"]:
        assert row["config"] == "tiny"
        modes = ["train"] if row["variant"] == "ours (no aux loss)" else ["infer", "train"]
        for mode, batch in (("infer", 1), ("train", 2)):
            if mode not in modes:
                assert f"{mode}_s" not in row
                continue
            seconds = row[f"{mode}_s"]
            assert finite_positive(seconds) and row[f"{mode}_s_all"] == [seconds]  # 1 repeat: median = it
            assert row[f"{mode}_img_per_s"] == pytest.approx(batch / seconds)
            passes = 3 if mode == "train" else 1  # backward counted as 2 forwards
            assert row[f"{mode}_gflop_per_s"] == pytest.approx(2 * gflops * batch * passes / seconds)
            assert row[f"{mode}_mfu"] == pytest.approx(row[f"{mode}_gflop_per_s"] / (1000 * peak_tflops))
            assert 0 < row[f"{mode}_dense_share"] < 1  # every variant runs convolutions, and more
            assert row[f"{mode}_dense_s"] == pytest.approx(row[f"{mode}_dense_share"] * seconds)
        assert row["variant"] in printed.split("ours / HF")[0]

    if use_hf:
        by_label = {row["variant"]: row for row in results["speed"]}
        for ratio in results["ratios"]:
            theirs = by_label[ratio["against"]]
            assert ratio["infer"] == pytest.approx(by_label["ours"]["infer_s"] / theirs["infer_s"])
            assert ratio["train"] == pytest.approx(by_label["ours (no aux loss)"]["train_s"] / theirs["train_s"])
            assert ratio["infer_floor"] == pytest.approx(by_label["ours"]["infer_dense_s"] / theirs["infer_s"])
        assert "ours / HF" in printed
    else:
        assert any("Hugging Face rows skipped" in note for note in results["notes"])


def test_dense_kernel_share_counts_convolution_and_matmul_only():
    """Elementwise work counts nothing; a step that is one big matmul is nearly all dense time; a
    convolution counts in its forward and in its backward (run by the autograd engine)."""
    a = torch.randn(256, 256)
    b = torch.randn(768, 768)
    x = torch.randn(1, 16, 64, 64, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    assert timing.dense_kernel_share(lambda: (a.exp() * 2 + a.sin()).sum()) == 0.0
    assert 0.5 < timing.dense_kernel_share(lambda: b @ b) <= 1
    assert timing.dense_kernel_share(lambda: torch.nn.functional.conv2d(x, w)) > 0
    y = torch.nn.functional.conv2d(x, w).sum()
    assert timing.dense_kernel_share(lambda: y.backward()) > 0  # aten.convolution_backward alone


def test_hf_port_is_built_with_our_sizes():
    """The port, built from our `tiny` config, has exactly our parameter count (both use trainable
    BatchNorm there), and the r50 one ours plus the BatchNorm affine parameters ours freezes."""
    pytest.importorskip("transformers", reason="the Hugging Face port is optional")
    for name in ("tiny", "r50"):
        with torch.device("meta"):
            ours = maskformer.build_model(name)
            theirs = hf_reference.maskformer_port(maskformer.CONFIGS[name])
        n_ours = sum(p.numel() for p in ours.parameters())
        n_theirs = sum(p.numel() for p in theirs.parameters())
        frozen_bn = sum(2 * m.weight.numel() for m in ours.backbone.modules()
                        if type(m).__name__ == "FrozenBatchNorm2d")
        assert n_theirs == n_ours + frozen_bn


def test_random_targets_partition_the_image():
    g = torch.Generator().manual_seed(0)
    targets = benchmark.random_ade_targets(3, 96, num_classes=150, generator=g)
    for target in targets:
        labels, masks = target["labels"], target["masks"]
        assert masks.dtype == torch.bool and masks.shape[1:] == (96, 96)
        assert 2 <= len(labels) <= benchmark.SEGMENTS_PER_IMAGE and len(labels) == len(masks)
        assert torch.equal(masks.sum(0), torch.ones(96, 96, dtype=torch.long))  # every pixel in one segment
        assert (masks.flatten(1).sum(1) > 0).all()  # no empty mask
        assert labels.unique().numel() == len(labels) and 0 <= labels.min() and labels.max() < 150


def test_memory_probe_sees_a_known_allocation():
    """The probe's figure for the tiny model's training step lies between the memory of its
    weights + AdamW state (3 copies of the parameters, plus gradients) and a generous bound."""
    args = benchmark.parse_args(["--device", "cpu", "--size", str(SIZE), "--threads", "1"])
    variant = benchmark.Variant("ours (no aux loss)", "ours", deep_supervision=False, modes=("train",))
    peak = benchmark.peak_memory_cpu(args, "tiny", variant, "train")
    params_mb = sum(p.numel() for p in maskformer.build_model("tiny").parameters()) * 4 / 2**20
    assert 4 * params_mb < peak < 4 * params_mb + 1000


def test_gpu_peak_lookup_by_name():
    """Names as torch.cuda.get_device_name gives them; "H100 PCIe" must not fall to the SXM figure."""
    assert timing.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert timing.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert timing.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert timing.peak_tflops("Some Future GPU") is None


def test_time_to_accuracy_runs_train_py_and_reads_its_validations(tmp_path, capsys):
    """--time-to-accuracy on a few iterations: the validations it read are train.py's own (the
    final one equals final_metrics' mIoU), each threshold's time is that of the first validation
    reaching it, the medians are of the runs, and the phase shares add up to the whole run (the
    default --workers: resolved by device, as train.py does)."""
    train_args = ("--crop-size 64 --batch-size 4 --iters 4 --eval-period 2 --val-images 4 "
                  "--threads 1 --log-period 1")
    results = benchmark.main(["--time-to-accuracy", "--runs", "1", "--seeds", "3", "5", "--train-args", train_args,
                              "--profile-steps", "2", "--json", str(tmp_path / "tta.json")])
    report = results["time_to_accuracy"]
    # every run traces to its seed and torch version; the two seeds really ran as two different runs
    assert [(r["seed"], r["torch"]) for r in report["runs"]] == [(3, torch.__version__), (5, torch.__version__)]
    finals = [r["final"] for r in report["runs"]]
    assert (report["spread"]["final_min"], report["spread"]["final_max"]) == (min(finals), max(finals))
    assert json.loads((tmp_path / "tta.json").read_text()) == json.loads(json.dumps(results))
    for run in report["runs"]:
        assert [v["step"] for v in run["validations"]] == [2, 4]
        assert run["final"] == run["validations"][-1]["value"]
        times = [v["wall_s"] for v in run["validations"]]
        assert 0 < times[0] <= times[1] <= run["wall_s"]
        for threshold, seconds in run["reached_s"].items():
            first = [v["wall_s"] for v in run["validations"] if v["value"] >= float(threshold)]
            assert seconds == (first[0] if first else None)
        assert finite_positive(run["img_per_s"])
    assert report["median"]["wall_s"] == pytest.approx(sum(r["wall_s"] for r in report["runs"]) / 2)
    phases = report["phases"]
    top_level = {k: v for k, v in phases["share"].items() if not k.startswith(" ")}
    assert sum(top_level.values()) == pytest.approx(1, abs=1e-3)
    assert 0 < phases["per_step_ms"]["  of which matching"] < phases["per_step_ms"]["loss (with matching)"]
    assert (phases["validations"], phases["saves"]) == (2, 2 + 2)  # steps 2 and 4: last.pt and best.pt each
    printed = capsys.readouterr().out
    assert "where the time goes" in printed and f"run 2 (seed 5, torch {torch.__version__})" in printed


def test_whole_run_shares_count_validations_and_saves_by_hand():
    """10 iterations, validation every 4 (steps 4, 8 and the last, 10), last.pt every 3 and at each
    validation (3, 4, 6, 8, 9, 10), best.pt at each validation: 3 validations, 9 saves."""
    recipe = type("Recipe", (), dict(max_iter=10, eval_period=4, checkpoint_period=3, batch_size=2))
    shares = training_speed.whole_run_shares(recipe, {"forward": 0.5, "backward, clipping, rest": 1.0},
                                        {"validation": 2.0, "checkpoint save": 1.0, "figures": 3.0}, step_s=1.5)
    assert (shares["validations"], shares["saves"]) == (3, 9)
    total = 10 * 1.5 + 3 * 2.0 + 9 * 1.0 + 3.0  # 33 s
    assert shares["modelled_run_s"] == total and shares["img_per_s"] == pytest.approx(2 / 1.5, abs=0.01)
    assert shares["share"] == pytest.approx({"forward": 5 / total, "backward, clipping, rest": 10 / total,
                                             "validation": 6 / total, "checkpoint save": 9 / total,
                                             "figures": 3 / total}, abs=1e-4)
