"""train.py: the recipe, the data order, the ablation flags, exact resume, crash-safe checkpoints,
DDP equivalence and the non-finite-loss stop. Everything runs tiny models on the `shapes` set."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import data
import train
from machinery import adamw, datasets
from tests.conftest import REPO

# A few iterations of a very small model on small shapes images: seconds per run.
FAST = ["--crop-size", "64", "--batch-size", "4", "--iters", "4", "--eval-period", "4",
        "--checkpoint-period", "2", "--val-images", "4", "--workers", "0", "--log-period", "1",
        "--no-progress", "--threads", "1"]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_losses(out: Path) -> list[tuple[int, float, float]]:
    return [(r["step"], r["loss"], r["grad_norm"]) for r in read_log(out) if "loss" in r]


# ---------------------------------------------------------------------------------------------
# Recipe, schedule, optimiser groups, sampler
# ---------------------------------------------------------------------------------------------
def test_recipe_defaults_follow_reference():
    r = train.resolve_recipe(train.parse_args(["--data", "ade20k"]))
    assert (r.config, r.crop_size, r.batch_size, r.max_iter) == ("r50", 512, 16, 160_000)
    assert (r.lr, r.weight_decay, r.backbone_lr_mult, r.warmup_iters, r.clip_grad_norm) == (1e-4, 1e-4, 0.1, 0, 0.01)
    r = train.resolve_recipe(train.parse_args(["--data", "ade20k", "--config", "swin_b"]))
    assert (r.lr, r.weight_decay, r.backbone_lr_mult, r.warmup_iters, r.crop_size) == (6e-5, 0.01, 1.0, 1500, 640)
    r = train.resolve_recipe(train.parse_args(["--data", "ade20k", "--lr", "3e-4", "--iters", "10"]))
    assert (r.lr, r.max_iter) == (3e-4, 10)


def test_cityscapes_trains_the_papers_r101_and_help_numbers_name_their_config(capsys):
    """The official repository has only R101 / R101c Cityscapes models: `--data cityscapes` trains R101
    (from ImageNet, ResNet optimiser settings), and every expected number in --help names the backbone
    the recipe trains by default (a number without one is R50's)."""
    args = train.parse_args(["--data", "cityscapes"])
    r = train.resolve_recipe(args)
    assert (r.config, r.crop_size, r.batch_size, r.max_iter, r.task) == ("r101", 512, 16, 90_000, "semantic")
    assert (r.lr, r.weight_decay, r.backbone_lr_mult) == (1e-4, 1e-4, 0.1)
    assert train.initial_weights(args, r) == "imagenet"
    assert train.resolve_recipe(train.parse_args(["--data", "cityscapes", "--config", "r101c"])).config == "r101c"
    assert set(train.EXPECTED_RESULT) == set(train.DATA_RECIPES)
    for name, result in train.EXPECTED_RESULT.items():
        config = train.resolve_recipe(train.parse_args(["--data", name])).config
        if result.startswith("-"):  # no official model: the folder and the synthetic shapes
            continue
        named = result.split("(")[1].rstrip(")").lower() if "(" in result else "r50"
        assert named == config, (name, result, config)
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone
    assert "cityscapes 78.5 mIoU (R101)" in help_text and "R50 model" not in help_text
    assert "recipe default: r50; r101 for cityscapes" in help_text


def test_panoptic_recipes_evaluate_once_at_the_end_as_the_official_configs():
    """TEST.EVAL_PERIOD 0 in the official panoptic configs: validation at the last iteration only;
    the semantic recipes validate every 5,000 iterations (their configs' EVAL_PERIOD)."""
    for name in ("coco_panoptic", "ade20k_panoptic"):
        r = train.resolve_recipe(train.parse_args(["--data", name]))
        assert (r.eval_period, r.checkpoint_period) == (r.max_iter, 5000)
    for name in ("ade20k", "cityscapes", "coco_stuff_10k", "ade20k_full", "mapillary"):
        assert train.resolve_recipe(train.parse_args(["--data", name])).eval_period == 5000


def test_data_workers_default_by_device():
    # loader processes only beside a GPU; on a CPU the data is made between steps; --workers wins
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert (train.data_workers(None, cpu), train.data_workers(None, cuda)) == (0, 2)
    assert (train.data_workers(3, cpu), train.data_workers(0, cuda)) == (3, 0)
    assert train.parse_args([]).workers is None


def test_lr_factor_poly_and_warmup_by_hand():
    r = train.resolve_recipe(train.parse_args(["--data", "ade20k", "--config", "swin_t", "--iters", "1000",
                                               "--warmup-iters", "100"]))
    # step 50: poly (1 - 50/1000)^0.9 times warm-up 1e-6 * (1 - 0.5) + 0.5
    assert adamw.lr_factor(50, r) == pytest.approx(0.95 ** 0.9 * (0.5 + 0.5e-6))
    assert adamw.lr_factor(500, r) == pytest.approx(0.5 ** 0.9)
    assert adamw.lr_factor(0, r) == pytest.approx(1e-6)
    r = train.resolve_recipe(train.parse_args(["--data", "coco_panoptic"]))
    assert adamw.lr_factor(369_599, r) == 1.0 and adamw.lr_factor(369_600, r) == pytest.approx(0.1)


def test_param_groups_no_decay_on_norms_embeddings_and_bias_tables():
    model = torch.nn.Module()
    model.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    model.backbone.relative_position_bias_table = torch.nn.Parameter(torch.zeros(3, 2))
    model.head = torch.nn.Linear(4, 2)
    model.norm = torch.nn.LayerNorm(4)
    model.query = torch.nn.Embedding(5, 4)
    groups = adamw.param_groups(model, lr=1.0, weight_decay=0.5, backbone_lr_mult=0.1)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    assert setting[id(model.backbone[0].weight)] == (0.1, 0.5)
    assert setting[id(model.backbone[1].weight)] == (0.1, 0.0)
    assert setting[id(model.backbone.relative_position_bias_table)] == (0.1, 0.0)
    assert setting[id(model.head.weight)] == (1.0, 0.5) and setting[id(model.head.bias)] == (1.0, 0.5)
    assert setting[id(model.norm.weight)] == (1.0, 0.0) and setting[id(model.query.weight)] == (1.0, 0.0)
    assert len(setting) == sum(1 for _ in model.parameters())


def test_sampler_shards_and_resumes():
    one = data.TrainBatchSampler(10, 4, rank=0, world_size=1, seed=3)
    two = [data.TrainBatchSampler(10, 4, rank=r, world_size=2, seed=3) for r in range(2)]
    it1, it2 = iter(one), [iter(s) for s in two]
    first = [next(it1) for _ in range(6)]  # 24 items: crosses two epoch boundaries
    for batch in first:
        assert batch == next(it2[0]) + next(it2[1])
    # an epoch is a permutation of the dataset
    epoch0 = [i for b in first for i, _ in b][:10]
    assert sorted(epoch0) == list(range(10))
    # restarting at step 4 gives what the uninterrupted sampler gave at step 4
    resumed = iter(data.TrainBatchSampler(10, 4, rank=0, world_size=1, seed=3, start_step=4))
    assert next(resumed) == first[4] and next(resumed) == first[5]


# ---------------------------------------------------------------------------------------------
# End-to-end runs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags", [
    ["--head", "mask_classification"],
    ["--head", "mask_classification", "--matcher", "fixed"],  # N = K queries
    ["--head", "per_pixel"],
    ["--head", "per_pixel_plus"],
])
def test_every_model_and_matcher_trains(tmp_path, flags):
    if "fixed" in flags:
        flags = flags + ["--num-queries", str(datasets.build_dataset("shapes", split="val").num_classes)]
    metrics = train.train(train.parse_args(FAST + flags + ["--output", str(tmp_path)]))
    log = train_losses(tmp_path)
    assert [s for s, _, _ in log] == [1, 2, 3, 4]
    assert all(math.isfinite(loss) and loss > 0 for _, loss, _ in log)
    assert 0.0 <= metrics["mIoU"] <= 1.0
    for name in ("last.pt", "best.pt", "loss_curve.png", "prediction_0.png"):
        assert (tmp_path / name).is_file(), name
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(ckpt)


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
    full, parted = tmp_path / "full", tmp_path / "parted"
    args = FAST + ["--iters", "6", "--eval-period", "100"]
    train.train(train.parse_args(args + ["--output", str(full)]))

    # Interrupt the second run right after it writes the step-2 checkpoint.
    real_save = train.save_checkpoint

    def save_then_crash(path, state):
        real_save(path, state)
        if path.name == "last.pt" and state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train.train(train.parse_args(args + ["--output", str(parted)]))
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    train.train(train.parse_args(args + ["--output", str(parted), "--resume"]))

    assert train_losses(parted) == train_losses(full)  # every loss and grad norm, exactly
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(parted / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import losses

    real = losses.MaskFormerLoss.forward
    calls = {"n": 0}

    def poisoned(self, outputs, batch):
        calls["n"] += 1
        terms = real(self, outputs, batch)
        return {k: v * float("nan") for k, v in terms.items()} if calls["n"] == 3 else terms

    monkeypatch.setattr(losses.MaskFormerLoss, "forward", poisoned)
    with pytest.raises(SystemExit, match=r"the loss became nan at step 2.*last good checkpoint"):
        train.main(FAST + ["--output", str(tmp_path)])
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_weights_flag_reinitialises_a_head_of_another_class_count(tmp_path, capsys):
    import maskformer

    other = maskformer.build_model("tiny", num_classes=3)
    torch.save({"model": other.state_dict(), "config": {}}, tmp_path / "w.pt")
    train.train(train.parse_args(FAST + ["--iters", "1", "--output", str(tmp_path / "run"),
                                          "--weights", str(tmp_path / "w.pt")]))
    out = capsys.readouterr().out
    assert "re-initialised" in out and "class" in out


def test_bad_arguments_give_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        train.main(FAST + ["--output", str(tmp_path), "--weights", str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit, match="--num-queries"):
        train.main(FAST + ["--output", str(tmp_path), "--matcher", "fixed", "--num-queries", "3"])
    with pytest.raises(SystemExit, match="data-root|root"):
        train.main(FAST + ["--output", str(tmp_path), "--data", "ade20k"])


# ---------------------------------------------------------------------------------------------
# The allocator: freed tensors' memory is reused, not handed back and faulted in again
# ---------------------------------------------------------------------------------------------
FAULT_COUNTER = """
import resource, sys, torch
sys.path.insert(0, {repo!r})
import train
args = train.parse_args(["--crop-size", "96", "--workers", "0"])
if {keep}:
    train.keep_freed_memory()
recipe = train.resolve_recipe(args)
train_set, _ = train.build_datasets(args, recipe)
model, criterion = train.build_model_and_criterion(args, recipe, train_set.num_classes)
optimizer, _ = train.adamw.build_optimizer(model, recipe)
batches = iter(train.build_train_loader(train_set, 8, 1, 0, 0, 1, torch.device("cpu"), args))
settings = train.StepSettings(1, torch.device("cpu"), None, 0.01, model.config.num_queries)
scaler = torch.amp.GradScaler("cpu", enabled=False)
for step in range(8):
    if step == 3:
        start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    train.train_step(model, batches, criterion, optimizer, scaler, settings)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator switches: Linux only")
def test_keep_freed_memory_stops_the_page_faults_of_every_step():
    """Five training steps of the classroom model (96 px) with glibc's defaults and after
    `keep_freed_memory`: the page faults per step (fresh pages the kernel zero-fills) drop by far."""
    per_step = {}
    for keep in (False, True):
        result = subprocess.run([sys.executable, "-c", FAULT_COUNTER.format(repo=str(REPO), keep=keep)],
                                capture_output=True, text=True, timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr
        per_step[keep] = float(result.stdout.split()[-1])
    assert per_step[True] < 0.2 * per_step[False], per_step


# ---------------------------------------------------------------------------------------------
# Crash safety: SIGKILL while writing a checkpoint
# ---------------------------------------------------------------------------------------------
WRITER = """
import sys, torch
sys.path.insert(0, {repo!r})
from pathlib import Path
from machinery import checkpoint
path = Path({path!r})
big = torch.arange(4_000_000, dtype=torch.float32)  # 16 MB: a write takes long enough to interrupt
step = 0
while True:
    step += 1
    checkpoint.save_checkpoint(path, {{"step": step, "model": {{"w": big + step}}}})
"""


def test_sigkill_during_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    for delay in (0.05, 0.3, 0.7):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), path=str(path))])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=True)  # must not raise: the file is never torn
        step = ckpt["step"]
        assert step >= 1
        assert torch.equal(ckpt["model"]["w"], torch.arange(4_000_000, dtype=torch.float32) + step)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert all(p.name.startswith(".last.pt.tmp") for p in leftovers)  # only torn temp files, never last.pt


# ---------------------------------------------------------------------------------------------
# Two processes (gloo, CPU) == one process with the same global batch
# ---------------------------------------------------------------------------------------------
def run_torchrun(nproc: int, out: Path, flags: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "train.py"), *flags, "--output", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_ddp_equals_one_process(tmp_path):
    if shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"):
        pytest.skip("torch.distributed.run unavailable")
    # Per-pixel baseline with frozen BatchNorm: per-image computations, so the two set-ups must
    # agree to float rounding. (Trainable BN would see 2 images per process instead of 4.)
    # MaskFormer's loss under DDP and accumulation: tests/test_ddp.py.
    flags = FAST + ["--iters", "3", "--eval-period", "100", "--head", "per_pixel",
                    "--set", "backbone_kwargs={'norm': 'frozen_bn', 'width': 32}"]
    run_torchrun(1, tmp_path / "one", flags)
    run_torchrun(2, tmp_path / "two", flags)
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert [s for s, _, _ in one] == [s for s, _, _ in two] == [1, 2, 3]
    for (_, loss1, grad1), (_, loss2, grad2) in zip(one, two):
        assert loss2 == pytest.approx(loss1, rel=1e-5)
        assert grad2 == pytest.approx(grad1, rel=1e-4)
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k


def test_the_training_loop_is_in_the_first_screens_of_train_py():
    # a reader opening train.py sees the loop (forward -> match + loss -> backward -> step) early
    lines = (REPO / "train.py").read_text().splitlines()
    loop = next(i for i, line in enumerate(lines, 1) if line.strip().startswith("for step in range("))
    train_def = next(i for i, line in enumerate(lines, 1) if line.startswith("def train("))
    assert train_def < loop <= 200, f"train() at line {train_def}, its loop at line {loop}"


def test_optimizer_is_fused_adamw_with_the_plain_update():
    """build_optimizer uses PyTorch's fused AdamW on CPU; three steps give the weights of the plain
    (per-tensor loop) AdamW with the same groups, up to float rounding, and they did move."""
    args = train.parse_args([])
    recipe = train.resolve_recipe(args)
    torch.manual_seed(0)
    model, _ = train.build_model_and_criterion(args, recipe, num_classes=7)
    initial, reference = copy.deepcopy(model), copy.deepcopy(model)
    optimizer, _ = adamw.build_optimizer(model, recipe)
    assert all(group["fused"] for group in optimizer.param_groups)
    plain = torch.optim.AdamW(adamw.param_groups(reference, recipe.lr, recipe.weight_decay, recipe.backbone_lr_mult),
                              lr=recipe.lr, weight_decay=recipe.weight_decay, foreach=False)
    for fused_group, plain_group in zip(optimizer.param_groups, plain.param_groups):
        plain_group["lr"] = fused_group["lr"]  # the schedule's first factor (warm-up), set by build_optimizer
    for step in range(3):
        for p, q in zip(model.parameters(), reference.parameters()):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(step)) * 1e-3
            q.grad = p.grad.clone()
        optimizer.step()
        plain.step()
    for p, q, p0 in zip(model.parameters(), reference.parameters(), initial.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
        assert (p - p0).abs().max() > optimizer.param_groups[0]["lr"]  # Adam moves ~lr per step
