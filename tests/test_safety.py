"""Nothing lost, one clear line: train.py, infer.py, machinery/checkpoint.py and metrics.py under faults and bad input.

Every case is a row of a table. Each row runs a command (in-process `main(argv)` where that shows
the same exit status and stderr as the shell would; a subprocess where the real process matters),
then checks four things: the exit status, that stderr holds no traceback, that it names the flag
or file at fault, and that no file that was in the run / output folder before the command changed
(SHA-256 before and after). Everything uses the tiny config at crop 64 on a few 64 x 64 images.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import infer
import inference
import maskformer
import metrics
import train
from machinery import drawing
from tests.conftest import REPO

# `T`: a tiny model on 64 x 64 crops, validation on 2 images, a log line every step
T = ["--config", "tiny", "--batch-size", "2", "--crop-size", "64", "--workers", "0", "--no-progress",
     "--val-images", "2", "--log-period", "1", "--threads", "1"]


# ---------------------------------------------------------------------------------------------
# Helpers: run a command, fingerprint a folder, check the one-line error
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    code: int
    out: str
    err: str


def run_main(main, argv: list[str], capsys) -> Result:
    """`main(argv)` in this process, with the exit status and stderr Python's top level would give."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):  # the interpreter prints the message to stderr and exits 1
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def run_script(script: str, argv: list[str], cwd: Path) -> Result:
    proc = subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_unchanged(before: dict[str, str], folder: Path) -> None:
    after = checksums(folder)
    changed = [name for name, digest in before.items() if after.get(name) != digest]
    assert not changed, f"files changed or deleted: {changed}"


def assert_clean_error(result: Result, names: list[str], code: int | None = None) -> None:
    """Exit status != 0 (or `code`), no traceback, and an error line naming every one of `names`."""
    assert result.code != 0 if code is None else result.code == code, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err, result.err[-3000:]
    lines = [line for line in result.err.splitlines() if "error:" in line]
    assert lines, result.err[-2000:]
    for name in names:
        assert any(name in line for line in lines), (name, lines)


def strict_json_loads(text: str):
    """json.loads that refuses NaN / Infinity (not JSON)."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def finite_checkpoint(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point()), path
    return ckpt


# ---------------------------------------------------------------------------------------------
# Small on-disk data: a `--data folder` dataset and photos
# ---------------------------------------------------------------------------------------------
def random_image(seed: int, size=(64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def label_map(seed: int, size=(64, 64), classes: int = 3) -> np.ndarray:
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    return ((x // 16 + y // 16 + seed) % classes).astype(np.uint8)  # blocks of every class


def folder_dataset(root: Path, fault: str | None = None, split_of_fault: str = "train") -> Path:
    """root/classes.txt (3 classes), images/{train,val}/i.png, labels/{train,val}/i.png: 2 training and
    2 validation pairs. `fault` spoils pair 1 of `split_of_fault`: "out_of_range" (label 7),
    "size" (label 48 x 64), "rgb" (RGB label), "corrupt" (image bytes that are no image),
    "all_ignore" (every label of that split 255)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("sky\nroad\ncar\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(2):
            image, label = random_image(i + 10 * (split == "val")), label_map(i)
            bad = fault if split == split_of_fault and (i == 1 or fault == "all_ignore") else None
            if bad == "out_of_range":
                label[5:9, 5:9] = 7
            elif bad == "size":
                label = label[:48]
            elif bad == "all_ignore":
                label[:] = 255
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            label = np.stack([label] * 3, -1) if bad == "rgb" else label
            Image.fromarray(label).save(root / "labels" / split / f"{i}.png")
            if bad == "corrupt":
                (root / "images" / split / f"{i}.png").write_bytes(b"\x89PNG this is not an image")
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run that finished (2 iterations, a checkpoint at each, validated at the end); copied by tests."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train.main(T + ["--iters", "2", "--eval-period", "2", "--checkpoint-period", "1", "--output", str(out)])
    assert (out / "final_metrics.json").is_file() and (out / "last.pt").is_file()
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


# ---------------------------------------------------------------------------------------------
# Every command-line value checked at parse time
# ---------------------------------------------------------------------------------------------
NO_CUDA_DEVICE = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
TRAIN_FLAGS = [
    (["--iters", "-3"], "--iters"), (["--iters", "0"], "--iters"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-0.001"], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "nan"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--backbone-lr-mult", "-0.1"], "--backbone-lr-mult"),
    (["--warmup-iters", "-1"], "--warmup-iters"), (["--clip-grad", "-1"], "--clip-grad"),
    (["--accum-steps", "0"], "--accum-steps"), (["--per-device-batch", "0"], "--per-device-batch"),
    (["--seed", "-1"], "--seed"), (["--threads", "0"], "--threads"), (["--eval-period", "0"], "--eval-period"),
    (["--checkpoint-period", "0"], "--checkpoint-period"), (["--val-images", "0"], "--val-images"),
    (["--log-period", "0"], "--log-period"), (["--crop-size", "16"], "--crop-size"), (["--workers", "-1"], "--workers"),
    (["--num-queries", "0"], "--num-queries"), (["--ignore-index", "-1"], "--ignore-index"),
    (["--iters", "2.5"], "--iters"), (["--device", "tpu"], "--device"), (["--device", NO_CUDA_DEVICE], "--device"),
    (["--set", "dec_layers=2.5"], "dec_layers"), (["--set", "dec_layers=two"], "dec_layers"),
    (["--set", "no_such_field=1"], "no_such_field"), (["--set", "dec_layers"], "--set"),
    (["--set", "num_classes=5"], "num_classes"), (["--resume", "--overwrite"], "--overwrite"),
    (["--data", "folder", "--data-root", "/no/such/folder"], "--data-root"),
    (["--dist-timeout", "0"], "--dist-timeout"),
]
INFER_FLAGS = [
    (["--size", "-5"], "--size"), (["--size", "0"], "--size"), (["--max-size", "0"], "--max-size"),
    (["--object-mask-threshold", "1.5"], "--object-mask-threshold"),
    (["--overlap-threshold", "-0.1"], "--overlap-threshold"), (["--batch-size", "0"], "--batch-size"),
    (["--workers", "-1"], "--workers"), (["--max-batches", "0"], "--max-batches"),
    (["--device", "tpu"], "--device"), (["--device", NO_CUDA_DEVICE], "--device"),
    (["--data", "ade20k", "--data-root", "/no/such/folder"], "--data-root"),
]


@pytest.mark.parametrize("flags, name", TRAIN_FLAGS, ids=[" ".join(f) for f, _ in TRAIN_FLAGS])
def test_train_flag_out_of_range(tmp_path, capsys, flags, name):
    (tmp_path / "keep.txt").write_text("a user's file")
    before = checksums(tmp_path)
    result = run_main(train.main, T + flags + ["--output", str(tmp_path / "run")], capsys)
    assert_clean_error(result, [name], code=2)
    assert not (tmp_path / "run").exists()  # nothing was started
    assert_unchanged(before, tmp_path)


@pytest.mark.parametrize("flags, name", INFER_FLAGS, ids=[" ".join(f) for f, _ in INFER_FLAGS])
def test_infer_flag_out_of_range(tmp_path, capsys, flags, name):
    Image.fromarray(random_image(0)).save(tmp_path / "photo.png")
    before = checksums(tmp_path)
    argv = ["--config", "tiny", "--random-init", "--input", str(tmp_path / "photo.png"),
            "--output", str(tmp_path / "out")]
    result = run_main(infer.main, argv + flags, capsys)
    assert_clean_error(result, [name], code=2)
    assert not (tmp_path / "out").exists()
    assert_unchanged(before, tmp_path)


MISSING = [  # (script, flags, exit status, name in the error line)
    ("train", ["--weights", "/no/such/weights.pt"], 1, "/no/such/weights.pt"),
    ("infer", ["--weights", "/no/such/weights.pt", "--input", "PHOTO"], 1, "/no/such/weights.pt"),
    ("infer", ["--config", "tiny", "--random-init", "--input", "/no/such/photo.png"], 2, "/no/such/photo.png"),
    ("infer", ["--config", "tiny", "--random-init", "--input", "NOTES"], 2, "notes.txt"),
]


@pytest.mark.parametrize("script, flags, code, name", MISSING, ids=[f"{s} {' '.join(f)}" for s, f, _, _ in MISSING])
def test_missing_or_wrong_input_file(tmp_path, capsys, script, flags, code, name):
    Image.fromarray(random_image(0)).save(tmp_path / "photo.png")
    (tmp_path / "notes.txt").write_text("not an image")
    flags = [{"PHOTO": str(tmp_path / "photo.png"), "NOTES": str(tmp_path / "notes.txt")}.get(f, f) for f in flags]
    before = checksums(tmp_path)
    main, argv = (train.main, T) if script == "train" else (infer.main, [])
    result = run_main(main, argv + flags + ["--output", str(tmp_path / "out")], capsys)
    assert_clean_error(result, [name], code=code)
    assert_unchanged(before, tmp_path)


def test_infer_weights_of_another_config_names_the_differences(tmp_path, capsys):
    other = maskformer.build_model("tiny", num_classes=5, hidden_dim=32, mask_dim=32, conv_dim=32, dim_feedforward=64)
    torch.save({"model": other.state_dict(), "config": dataclasses.asdict(other.config)}, tmp_path / "other.pt")
    Image.fromarray(random_image(0)).save(tmp_path / "photo.png")
    before = checksums(tmp_path)
    result = run_main(infer.main, ["--config", "tiny", "--weights", str(tmp_path / "other.pt"), "--input",
                                   str(tmp_path / "photo.png"), "--output", str(tmp_path / "out")], capsys)
    assert_clean_error(result, [str(tmp_path / "other.pt"), "K=5", "hidden_dim 64 (found 32)"], code=1)
    assert_unchanged(before, tmp_path)


OUTPUTS = ["existing file", "file as parent", "read-only"]


@pytest.mark.parametrize("script", ["train", "infer"])
@pytest.mark.parametrize("kind", OUTPUTS)
def test_unusable_output_folder(tmp_path, capsys, script, kind):
    (tmp_path / "notes.txt").write_text("a user's file")
    Image.fromarray(random_image(0)).save(tmp_path / "photo.png")
    if kind == "read-only":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc (Linux): a folder nobody, root included, can write in")
        output = "/proc/maskformer-test/run"
    else:
        output = str(tmp_path / "notes.txt") + ("/run" if kind == "file as parent" else "")
    before = checksums(tmp_path)
    main, argv = (train.main, T) if script == "train" else \
        (infer.main, ["--config", "tiny", "--random-init", "--input", str(tmp_path / "photo.png")])
    result = run_main(main, argv + ["--output", output], capsys)
    assert_clean_error(result, ["--output", output.split("/run")[0] if kind != "read-only" else "/proc"], code=2)
    assert_unchanged(before, tmp_path)


# ---------------------------------------------------------------------------------------------
# Training under faults: one function per row of the table below
# ---------------------------------------------------------------------------------------------
def nan_mask_classification(tmp_path, capsys, finished, monkeypatch):
    """At lr 1e6 the loss is finite (~1e32) at step 2 but the gradient norm is
    NaN. Run as a real process: exit status 1, one line, and last.pt is the last finite one."""
    out = tmp_path / "run"
    result = run_script("train.py", T + ["--iters", "8", "--eval-period", "100", "--checkpoint-period", "1",
                                         "--lr", "1e6", "--output", str(out)], tmp_path)
    return result, out, {}, ["step", str(out / "last.pt")]


def nan_per_pixel(tmp_path, capsys, finished, monkeypatch):
    out = tmp_path / "run"
    result = run_main(train.main, T + ["--iters", "8", "--eval-period", "100", "--checkpoint-period", "1",
                                       "--lr", "1e6", "--head", "per_pixel", "--output", str(out)], capsys)
    return result, out, {}, ["step", str(out / "last.pt")]


def clobber_explicit_output(tmp_path, capsys, finished, monkeypatch):
    """A fresh run pointed at a finished run's folder refuses it; the old run is untouched."""
    out = copy_run(finished, tmp_path)
    before = checksums(out)
    result = run_main(train.main, T + ["--iters", "2", "--output", str(out)], capsys)
    return result, out, before, [str(out), "--resume", "--output"]


def resume_finished_run(tmp_path, capsys, finished, monkeypatch):
    """--resume of a finished run says so and leaves every file as it was (exit 0)."""
    out = copy_run(finished, tmp_path)
    before = checksums(out)
    result = run_main(train.main, T + ["--iters", "2", "--eval-period", "2", "--output", str(out), "--resume"], capsys)
    assert "finished" in result.out
    return result, out, before, None


def resume_another_config(tmp_path, capsys, finished, monkeypatch):
    out = copy_run(finished, tmp_path)
    before = checksums(out)
    result = run_main(train.main, T + ["--iters", "4", "--output", str(out), "--resume", "--set", "dec_layers=1"],
                      capsys)
    return result, out, before, [str(out / "last.pt"), "dec_layers 1 (found 2)"]


def resume_another_class_count(tmp_path, capsys, finished, monkeypatch):
    out = copy_run(finished, tmp_path)
    before = checksums(out)
    classes = torch.load(out / "last.pt", weights_only=True)["config"]["num_classes"]
    root = folder_dataset(tmp_path / "data")  # 3 classes
    result = run_main(train.main, T + ["--iters", "4", "--output", str(out), "--resume", "--data", "folder",
                                       "--data-root", str(root)], capsys)
    return result, out, before, [str(out / "last.pt"), f"num_classes 3 (found {classes})"]


def resume_after_crash_leftovers(tmp_path, capsys, finished, monkeypatch):
    """A crash left a torn temp checkpoint and a torn last line in metrics.jsonl: --resume removes the
    first, skips the second and continues; every line written is strict JSON."""
    out = copy_run(finished, tmp_path)
    (out / ".last.pt.tmp4242").write_bytes(b"PK\x03\x04 torn")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 1.2')
    before = {}  # a resumed run rewrites last.pt, metrics.jsonl, final_metrics.json (and best.pt if better)
    result = run_main(train.main, T + ["--iters", "3", "--eval-period", "100", "--output", str(out), "--resume"],
                      capsys)
    assert not (out / ".last.pt.tmp4242").exists()
    records = [strict_json_loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 3
    return result, out, before, None


def overwrite_replaces_a_run(tmp_path, capsys, finished, monkeypatch):
    out = copy_run(finished, tmp_path)
    (out / "notes.txt").write_text("a user's file inside the run folder")
    before = {"notes.txt": checksums(out)["notes.txt"]}
    result = run_main(train.main, T + ["--iters", "1", "--eval-period", "1", "--output", str(out), "--overwrite"],
                      capsys)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 1
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 1]
    return result, out, before, None


def default_output_keeps_old_runs(tmp_path, capsys, finished, monkeypatch):
    """Without --output every run gets its own runs/<date-time> folder and runs/latest points at the
    newest; --resume without --output continues runs/latest. (Before: both runs wrote runs/latest.)"""
    monkeypatch.chdir(tmp_path)
    first = run_main(train.main, T + ["--iters", "1", "--eval-period", "1"], capsys)
    assert first.code == 0, first.err
    old = (tmp_path / "runs" / "latest").resolve()
    before = checksums(old)
    second = run_main(train.main, T + ["--iters", "1", "--eval-period", "1", "--seed", "1"], capsys)
    new = (tmp_path / "runs" / "latest").resolve()
    assert new != old and (new / "final_metrics.json").is_file()
    assert_unchanged(before, old)
    resumed = run_main(train.main, T + ["--iters", "1", "--eval-period", "1", "--resume"], capsys)
    assert str(new.name) in resumed.out and "finished" in resumed.out
    return second, new, {}, None


def bad_validation_label(tmp_path, capsys, finished, monkeypatch):
    """A bad validation label (found in a DataLoader worker) is reported as a validation failure in one
    line naming the file, after the checkpoint of that step was written: no training is lost."""
    root = folder_dataset(tmp_path / "data", "out_of_range", split_of_fault="val")
    out = tmp_path / "run"
    result = run_main(train.main, T + ["--data", "folder", "--data-root", str(root), "--workers", "1", "--iters", "2",
                                       "--eval-period", "2", "--checkpoint-period", "100", "--output", str(out)],
                      capsys)
    assert finite_checkpoint(out / "last.pt")["step"] == 2
    return result, out, {}, ["validation at step 2", str(root / "labels" / "val" / "1.png"), "--resume"]


def resume_after_validation_failure(tmp_path, capsys, finished, monkeypatch):
    """The validation of the last step failed (a bad label); once the label is fixed, --resume does that
    validation, records it and finishes the run, without training again."""
    root = folder_dataset(tmp_path / "data", "out_of_range", split_of_fault="val")
    out = tmp_path / "run"
    argv = T + ["--data", "folder", "--data-root", str(root), "--iters", "2", "--eval-period", "2",
                "--checkpoint-period", "100", "--output", str(out)]
    failed = run_main(train.main, argv, capsys)
    assert_clean_error(failed, ["validation at step 2", str(root / "labels" / "val" / "1.png")])
    before = {"last.pt": checksums(out)["last.pt"]}
    Image.fromarray(label_map(1)).save(root / "labels" / "val" / "1.png")  # the label fixed
    result = run_main(train.main, argv + ["--resume"], capsys)
    assert "validation mIoU" in result.out
    assert strict_json_loads((out / "final_metrics.json").read_text())["num_images"] == 2
    records = [strict_json_loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 2] and "val_mIoU" in records[-1]
    return result, out, before, None


def all_ignore_validation(tmp_path, capsys, finished, monkeypatch):
    """Validation labels that are all `ignore`: a warning (not a silent nan), strict JSON with null."""
    root = folder_dataset(tmp_path / "data", "all_ignore", split_of_fault="val")
    out = tmp_path / "run"
    result = run_main(train.main, T + ["--data", "folder", "--data-root", str(root), "--iters", "1",
                                       "--output", str(out)], capsys)
    assert "warning" in result.out and "undefined" in result.out
    assert strict_json_loads((out / "final_metrics.json").read_text())["mIoU"] is None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict_json_loads(line)
    assert not (out / "best.pt").exists()
    return result, out, {}, None


def disk_full_during_save(tmp_path, capsys, finished, monkeypatch):
    """The save of step 2 fails half-way (ENOSPC): one line, no temp file left, last.pt of step 1 kept."""
    out = tmp_path / "run"
    real_save, saves = torch.save, []

    def save_until_disk_full(obj, f, *args, **kwargs):
        saves.append(obj.get("step"))
        if len(saves) == 2:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_full)
    result = run_main(train.main, T + ["--iters", "3", "--eval-period", "100", "--checkpoint-period", "1",
                                       "--output", str(out)], capsys)
    monkeypatch.setattr(torch, "save", real_save)
    assert saves == [1, 2]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    assert finite_checkpoint(out / "last.pt")["step"] == 1
    return result, out, {}, [str(out / "last.pt"), "No space left on device", "previous last.pt is kept"]


def disk_full_writing_figures(tmp_path, capsys, finished, monkeypatch):
    """The disk fills while the end-of-run figures are written: one line naming the file; last.pt kept."""
    out = tmp_path / "run"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "loss_curve.png"))

    monkeypatch.setattr(drawing, "save_figures", full_disk)
    result = run_main(train.main, T + ["--iters", "1", "--eval-period", "1", "--output", str(out)], capsys)
    assert finite_checkpoint(out / "last.pt")["step"] == 1
    return result, out, {}, ["No space left on device", str(out / "loss_curve.png")]


def weights_of_another_config(tmp_path, capsys, finished, monkeypatch):
    other = maskformer.build_model("tiny", num_classes=4, backbone_kwargs={"norm": "bn", "width": 16}, hidden_dim=32,
                                   mask_dim=32, conv_dim=32, dim_feedforward=64)
    weights = tmp_path / "other.pt"
    torch.save({"model": other.state_dict(), "config": {"num_classes": 4}}, weights)
    out = tmp_path / "run"
    result = run_main(train.main, T + ["--iters", "1", "--weights", str(weights), "--output", str(out)], capsys)
    assert not (out / "last.pt").exists()
    return result, out, {}, ["--weights", str(weights)]


def bad_training_file(fault: str):
    def case(tmp_path, capsys, finished, monkeypatch):
        """A bad training file met inside a DataLoader worker: the worker's one line naming the file."""
        root = folder_dataset(tmp_path / "data", fault)
        out = tmp_path / "run"
        result = run_main(train.main, T + ["--data", "folder", "--data-root", str(root), "--workers", "1",
                                           "--iters", "2", "--output", str(out)], capsys)
        assert len([line for line in result.err.splitlines() if line.strip()]) == 1, result.err
        kind = "images" if fault == "corrupt" else "labels"
        return result, out, {}, [str(root / kind / "train" / "1.png")]

    case.__name__ = f"bad_training_file_{fault}"
    return case


TRAINING_CASES = {case.__name__: case for case in [
    nan_mask_classification, nan_per_pixel, clobber_explicit_output, resume_finished_run, resume_another_config,
    resume_another_class_count, resume_after_crash_leftovers, overwrite_replaces_a_run, default_output_keeps_old_runs,
    bad_validation_label, resume_after_validation_failure, all_ignore_validation, disk_full_during_save,
    disk_full_writing_figures, weights_of_another_config,
    *(bad_training_file(fault) for fault in ("out_of_range", "size", "rgb", "corrupt")),
]}
SUCCEEDS = {"resume_finished_run", "resume_after_crash_leftovers", "overwrite_replaces_a_run",
            "resume_after_validation_failure",
            "default_output_keeps_old_runs", "all_ignore_validation"}


@pytest.mark.parametrize("name", list(TRAINING_CASES))
def test_training_fault(tmp_path, capsys, monkeypatch, finished_run, name):
    result, out, before, names = TRAINING_CASES[name](tmp_path, capsys, finished_run, monkeypatch)
    if name in SUCCEEDS:
        assert result.code == 0, result.err[-3000:]
        assert "Traceback" not in result.err
    else:
        assert_clean_error(result, names)
    assert_unchanged(before, out)
    if name.startswith("nan_"):
        error = next(line for line in result.err.splitlines() if "error:" in line)
        step = int(error.split(" at step ")[1].split()[0])
        assert finite_checkpoint(out / "last.pt")["step"] == step  # the step named, not one after it
        assert "nan" in error and "last good checkpoint" in error
    for path in out.glob("*.json*") if out.is_dir() else []:  # strict JSON in every file written
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            strict_json_loads(line)


# ---------------------------------------------------------------------------------------------
# Inference: inputs and other outputs are never written over; every readable image is processed
# ---------------------------------------------------------------------------------------------
def test_infer_output_folder_is_the_input_folder(tmp_path, capsys):
    """--input D --output D with photo.png and photo.jpg: both stems would write photo.png, which is
    also an input; the outputs take the extension into their names and no input changes."""
    Image.fromarray(random_image(0)).save(tmp_path / "photo.png")
    Image.fromarray(random_image(1)).save(tmp_path / "photo.jpg")
    Image.fromarray(random_image(2)).save(tmp_path / "other.png")
    before = checksums(tmp_path)
    result = run_main(infer.main, ["--config", "tiny", "--random-init", "--input", str(tmp_path), "--output",
                                   str(tmp_path), "--size", "64"], capsys)
    assert result.code == 0 and "Traceback" not in result.err, result.err
    assert_unchanged(before, tmp_path)
    written = sorted(set(checksums(tmp_path)) - set(before))
    assert written == ["other_png.png", "other_png_overlay.png", "photo_jpg.png", "photo_jpg_overlay.png",
                       "photo_png.png", "photo_png_overlay.png"]


def test_infer_folder_with_unreadable_images(tmp_path):
    """A real process: every readable image is predicted, each unreadable one named once, exit 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, seed in (("a.png", 0), ("c.jpg", 2)):
        Image.fromarray(random_image(seed)).save(photos / name)
    (photos / "b.png").write_bytes(b"\x89PNG not really")
    (photos / "d.jpg").write_bytes(b"")
    before = checksums(photos)
    result = run_script("infer.py", ["--config", "tiny", "--random-init", "--input", str(photos), "--output",
                                     str(tmp_path / "out"), "--size", "64", "--device", "cpu"], tmp_path)
    assert_clean_error(result, [str(photos / "b.png"), str(photos / "d.jpg")], code=1)
    assert sum(str(photos / "b.png") in line for line in result.err.splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "a_overlay.png", "c.png", "c_overlay.png"]
    assert_unchanged(before, photos)


def test_infer_eval_bad_label_in_a_worker(tmp_path, capsys):
    """--eval meets a bad validation label inside a DataLoader worker: one line naming the file."""
    root = folder_dataset(tmp_path / "data", "out_of_range", split_of_fault="val")
    before = checksums(root)
    argv = ["--eval", "--data", "folder", "--data-root", str(root), "--config", "tiny", "--random-init",
            "--workers", "1", "--size", "64", "--output", str(tmp_path / "out")]
    result = run_main(infer.main, argv, capsys)
    assert_clean_error(result, [str(root / "labels" / "val" / "1.png")], code=1)
    assert_unchanged(before, root)


@pytest.mark.parametrize("head", ["mask_classification", "per_pixel"])
def test_semantic_map_in_class_chunks_equals_full_argmax(head):
    """The bounded-memory semantic map equals the argmax of the full (K, H0, W0) scores, exactly,
    when the classes are resized one, seven or all 150 at a time; classes 3 and 10, given the same
    scores everywhere (tied across a chunk boundary), give class 3 only, as argmax does."""
    g = torch.Generator().manual_seed(0)
    if head == "per_pixel":  # per-pixel logits at stride 4
        logits = torch.randn(2, 150, 24, 32, generator=g) * 3
        logits[:, 10] = logits[:, 3] = logits[:, 3] + 1.0
        outputs = {"sem_seg_logits": logits}
    else:  # N = 20 (class, mask) pairs; p_i(3) = p_i(10) for every query
        class_logits = torch.randn(2, 20, 151, generator=g) * 2
        class_logits[..., 10] = class_logits[..., 3]
        outputs = {"pred_logits": class_logits, "pred_masks": torch.randn(2, 20, 24, 32, generator=g) * 4}
    image_sizes, orig_sizes = [(96, 128), (80, 100)], [(151, 207), (97, 133)]
    for b in range(2):
        full = inference.class_scores(outputs, b, (96, 128), image_sizes[b], orig_sizes[b]).argmax(0)
        pixels = orig_sizes[b][0] * orig_sizes[b][1]
        for per_chunk in (1, 7, 150):
            chunked = inference.semantic_map(outputs, b, (96, 128), image_sizes[b], orig_sizes[b],
                                         max_values=per_chunk * pixels)
            assert torch.equal(chunked, full), (b, per_chunk)
        assert len(full.unique()) > 5 and (full == 3).any() and not (full == 10).any()


class RandomMaskFormer(torch.nn.Module):
    """Random (class, mask) pairs for any input, from a seeded generator (K = 7 classes, N = 20)."""

    def __init__(self, seed: int):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, images):
        B, _, H, W = images.shape
        return {"pred_logits": torch.randn(B, 20, 8, generator=self.generator) * 4,
                "pred_masks": torch.randn(B, 20, H // 4, W // 4, generator=self.generator) * 3}


@pytest.mark.parametrize("threshold", [0.3, 0.99])
def test_panoptic_resizes_only_kept_queries_with_the_same_result(threshold):
    """predict_panoptic resizes only the queries step 1 keeps; the segments equal those of resizing
    all N masks to the original size first (the official order), image by image."""
    is_thing = [True, False, True, False, True, True, False]
    images, image_sizes, orig_sizes = torch.randn(2, 3, 64, 96), [(64, 96), (50, 70)], [(131, 197), (101, 141)]
    ours = inference.predict_panoptic(RandomMaskFormer(0), images, is_thing, image_sizes, orig_sizes,
                                  object_mask_threshold=threshold, overlap_threshold=0.1)
    outputs = inference.run_model(RandomMaskFormer(0), inference.pad_to_multiple(images))
    for b in range(2):
        masks = inference.resize_to_original(outputs["pred_masks"][b], (64, 96), image_sizes[b], orig_sizes[b])
        pan_seg, segments = inference.panoptic_inference(outputs["pred_logits"][b], masks, is_thing, threshold, 0.1)
        assert torch.equal(ours[b][0], pan_seg) and ours[b][1] == segments
    assert (len(ours[0][1]) + len(ours[1][1]) > 5) == (threshold < 0.5)  # segments found, or none kept


# ---------------------------------------------------------------------------------------------
# Library API
# ---------------------------------------------------------------------------------------------
def test_semantic_metrics_rejects_float_maps():
    m = metrics.SemanticMetrics(3)
    with pytest.raises(ValueError, match="pred must be an integer label map.*float32"):
        m.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be an integer label map"):
        m.update(torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 4))
    assert m.confusion is None or m.confusion.sum() == 0  # nothing was counted


def test_panoptic_metrics_names_an_out_of_range_category():
    m = metrics.PanopticMetrics([True, False])
    seg = torch.tensor([[1, 1], [2, 2]])
    with pytest.raises(ValueError, match="predicted segment 2 has category_id 5; expected 0..1"):
        m.update(seg, [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 5}], seg,
                 [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}])
    with pytest.raises(ValueError, match="ground-truth segment 1 has category_id -1"):
        m.update(seg, [{"id": 1, "category_id": 0}, {"id": 2, "category_id": 1}], seg,
                 [{"id": 1, "category_id": -1}, {"id": 2, "category_id": 1}])
    assert m.stats.sum() == 0


def test_strict_json_writes_null_for_nan_and_inf():
    text = metrics.strict_json({"mIoU": math.nan, "per_class": [0.5, math.inf, -math.inf], "n": 3})
    assert strict_json_loads(text) == {"mIoU": None, "per_class": [0.5, None, None], "n": 3}
