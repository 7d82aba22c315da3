"""Scale-out (machinery/distributed.py, train.py's DDP set-up): several processes train exactly as one.

Every run here is `torchrun` on CPU with the gloo backend (what a laptop or CI has): a tiny
MaskFormer on 64-pixel `shapes` crops for 3 steps. BatchNorm is frozen (the paper's backbones
freeze theirs; trainable BatchNorm would see 2 images per process instead of 4), so 2 processes
x 2 images must give what 1 process x 4 images gives, to float rounding: the matching, the global
loss normalisers, the data order, the all-reduced gradients, AdamW, and the validation metrics
summed over processes. Also: no gradient copy into DDP's buckets (no stride warning), two "nodes"
meeting at a c10d rendezvous, and a killed process stopping the others with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")

TINY = ["--crop-size", "64", "--batch-size", "4", "--val-images", "4", "--workers", "0", "--log-period", "1",
        "--no-progress", "--threads", "1", "--set", "backbone_kwargs={'norm': 'frozen_bn', 'width': 32}"]
FLAGS = [*TINY, "--iters", "3", "--eval-period", "3", "--checkpoint-period", "3"]

# Runs train.main under torchrun and records, on every process, the gradients that reach the
# clipping (i.e. after DDP's all-reduce) and every warning raised.
SPY = """
import os, sys, warnings
from pathlib import Path
import torch
sys.path.insert(0, {repo!r})
import train

grads = []
clip = torch.nn.utils.clip_grad_norm_

def spy(params, max_norm, *args, **kwargs):
    grads.append(torch.cat([p.grad.detach().flatten().clone() for p in params]))
    return clip(params, max_norm, *args, **kwargs)

torch.nn.utils.clip_grad_norm_ = spy
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    train.main(sys.argv[1:])
out = Path(sys.argv[sys.argv.index("--output") + 1])
torch.save({{"grads": grads, "warnings": [f"{{w.category.__name__}}: {{w.message}}" for w in caught]}},
           out / f"spy_{{os.environ.get('RANK', '0')}}.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script: Path, out: Path, launch: list[str], flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launch, str(script), *flags, "--output", str(out)]


def node_launch(node: int, port: int, run_id: str) -> list[str]:
    """torchrun flags of "machine" `node` of 2, one process each; node 0 hosts the rendezvous
    (on real machines: the one whose address is HOST; here both are 127.0.0.1, so it is said)."""
    return ["--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", run_id, "--rdzv_conf", f"is_host={node == 0}"]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, their children, and so on (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [p for child in map(int, children) for p in (child, *descendants(child))]


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def train_records(out: Path) -> list[dict]:
    return [r for r in read_log(out) if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The same 3 steps as 1 process x 4 images, as 2 processes x 2 images (one node), and as
    1 process x 2 images x 2 accumulation steps."""
    root = tmp_path_factory.mktemp("ddp")
    script = root / "spy.py"
    script.write_text(SPY.format(repo=str(REPO)))
    folders = {"one": root / "one", "two": root / "two", "accum": root / "accum"}
    for name, nproc, extra in (("one", 1, []), ("two", 2, []),
                               ("accum", 1, ["--per-device-batch", "2", "--accum-steps", "2"])):
        launch = ["--standalone", f"--nproc_per_node={nproc}"]
        folders[name + "_stderr"] = run(torchrun_command(script, folders[name], launch, FLAGS + extra)).stderr
    return folders


def test_two_processes_write_no_stride_warning_and_copy_no_gradient(runs):
    # "Grad strides do not match bucket view strides" is the reducer saying it copies each gradient
    # into its bucket every step; channels-last weights + gradient_as_bucket_view avoid it
    assert "bucket view" not in runs["two_stderr"], runs["two_stderr"][-3000:]
    for rank in (0, 1):
        caught = torch.load(runs["two"] / f"spy_{rank}.pt", weights_only=True)["warnings"]
        assert not [w for w in caught if w.startswith("UserWarning")], caught


@pytest.mark.parametrize("other", ["two", "accum"])
def test_two_processes_equal_one_process_losses_gradients_weights_and_validation(runs, other):
    # "two": 2 processes x 2 images; "accum": 1 process x 2 images x 2 accumulation steps. Both must
    # give 1 process x 4 images: the normalisers (num_masks, the CE's class-weight sum) are the step's
    one, two = train_records(runs["one"]), train_records(runs[other])
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two):
        # every term: the matcher per image, the CE and mask terms over global normalisers
        loss_keys = [k for k in a if k.startswith("loss")]
        assert len(loss_keys) == 7  # loss + (ce, focal, dice) x (final, auxiliary)
        for key in [*loss_keys, "grad_norm"]:
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-7), (a["step"], key)
    # the gradients after the all-reduce, identical on both processes and equal to one process's
    grads_one = torch.load(runs["one"] / "spy_0.pt", weights_only=True)["grads"]
    ranks = (0, 1) if other == "two" else (0, 0)
    grads_two = [torch.load(runs[other] / f"spy_{r}.pt", weights_only=True)["grads"] for r in ranks]
    assert len(grads_one) == len(grads_two[0]) == len(grads_two[1]) == 3
    for step in range(3):
        assert torch.equal(grads_two[0][step], grads_two[1][step])  # both processes hold the same
        scale = grads_one[step].abs().max()
        assert (grads_two[0][step] - grads_one[step]).abs().max() <= 1e-4 * scale, step
    # the weights after 3 AdamW steps (rank 0's checkpoint)
    a = torch.load(runs["one"] / "last.pt", weights_only=True)["model"]
    b = torch.load(runs[other] / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-6), k
    # validation: each process evaluates 2 of the 4 images, the confusion matrices are summed
    val_one = [r for r in read_log(runs["one"]) if "val_mIoU" in r]
    val_two = [r for r in read_log(runs[other]) if "val_mIoU" in r]
    assert val_two[0]["val_mIoU"] == pytest.approx(val_one[0]["val_mIoU"], rel=1e-6)
    # only process 0 wrote: the same files, each line of metrics.jsonl once
    assert len(read_log(runs[other])) == len(read_log(runs["one"])) == 4  # 3 steps + 1 validation
    written = {p.name for p in runs["one"].iterdir() if not p.name.startswith("spy_")}
    assert written == {p.name for p in runs[other].iterdir() if not p.name.startswith("spy_")}
    final_one = json.loads((runs["one"] / "final_metrics.json").read_text())
    final_two = json.loads((runs[other] / "final_metrics.json").read_text())
    assert final_one["num_images"] == final_two["num_images"] == 4
    assert final_two["per_class_iou"] == pytest.approx(final_one["per_class_iou"], rel=1e-6, nan_ok=True)


def test_every_process_resumes_from_process_0s_checkpoint(runs, tmp_path):
    # the 3-step runs continue to step 4: 2 processes from the 2-process run's last.pt, 1 from the 1-process run's
    flags = [*TINY, "--iters", "4", "--eval-period", "4", "--checkpoint-period", "4", "--resume"]
    for name, nproc in (("one", 1), ("two", 2)):
        shutil.copytree(runs[name], tmp_path / name)
        stdout = run(torchrun_command(REPO / "train.py", tmp_path / name,
                                      ["--standalone", f"--nproc_per_node={nproc}"], flags)).stdout
        assert f"resumed from {tmp_path / name / 'last.pt'} at step 3" in stdout
    one, two = train_records(tmp_path / "one"), train_records(tmp_path / "two")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for key in ("loss", "loss_ce", "loss_focal", "loss_dice", "grad_norm"):
        assert two[-1][key] == pytest.approx(one[-1][key], rel=2e-5), key
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), rtol=1e-4, atol=1e-6), k


def test_two_fake_processes_give_the_one_process_loss(monkeypatch):
    """The loss's normalisers by hand: each "process" sees half of a batch and the other half's counts
    through a faked all-reduce; the mean of the two losses (what DDP's gradient averaging optimises)
    is the loss of the whole batch in one process, every term, the cross-entropy included."""
    import torch.distributed as dist

    from losses import MaskFormerLoss
    from tests.test_losses import random_batch

    outputs, targets = random_batch(7, [3, 1, 0, 2], num_aux=1)
    whole = MaskFormerLoss(5, num_aux_layers=1)(outputs, {"targets": targets})

    def half(part: slice) -> tuple[dict, list[dict]]:
        def layer(o: dict) -> dict:
            return {k: v[part] for k, v in o.items() if k != "aux_outputs"}

        return {**layer(outputs), "aux_outputs": [layer(o) for o in outputs["aux_outputs"]]}, targets[part]

    halves = [half(slice(0, 2)), half(slice(2, 4))]
    local_counts: list[list[torch.Tensor]] = [[], []]  # what each half contributes to each all-reduce

    def losses_of(i: int, add_other: bool) -> dict:
        calls = iter(local_counts[1 - i]) if add_other else None

        def all_reduce(tensor, op=None):
            if not add_other:
                local_counts[i].append(tensor.clone())
            else:
                tensor.add_(next(calls))

        monkeypatch.setattr(dist, "all_reduce", all_reduce)
        result = MaskFormerLoss(5, num_aux_layers=1)(halves[i][0], {"targets": halves[i][1]})
        if add_other:
            assert next(calls, None) is None  # every count was all-reduced
        return result

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    for i in (0, 1):
        losses_of(i, add_other=False)  # records the local counts
    per_process = [losses_of(i, add_other=True) for i in (0, 1)]
    assert set(whole) == set(per_process[0]) and len(whole) == 6
    for key in whole:
        mean = (per_process[0][key] + per_process[1][key]) / 2
        assert mean.item() == pytest.approx(whole[key].item(), rel=1e-5), key
    # one all-reduce per call, of the pair (mask count, class-weight sum); without the global class-weight
    # sum the cross-entropy would differ (the halves' weights differ)
    assert [len(calls) for calls in local_counts] == [1, 1]
    assert not torch.isclose(local_counts[0][0][1], local_counts[1][0][1])


def test_sum_over_processes_leaves_the_callers_tensor_alone(monkeypatch):
    # a faked 2-process all-reduce (the other process holds 10): the sum comes back, the input is unchanged
    import torch.distributed as dist

    from machinery import distributed

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: tensor.add_(10.0))
    counts = torch.tensor([3.0, 4.5])
    assert distributed.sum_over_processes(counts).tolist() == [13.0, 14.5]
    assert counts.tolist() == [3.0, 4.5]


def test_two_nodes_meet_at_a_c10d_rendezvous_and_train_together(runs, tmp_path):
    # two torchrun "machines" of one process each, as the multi-node command in docs/training.md
    port, out = free_port(), tmp_path / "nodes"
    nodes = [subprocess.Popen(
        torchrun_command(REPO / "train.py", out, node_launch(node, port, "test_ddp"), FLAGS),
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    results = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, results):
        assert node.returncode == 0, stderr[-3000:]
    assert "2 process(es) x 2 x 1 accumulation" in results[0][0] + results[1][0]
    single_node = train_records(runs["two"])
    for a, b in zip(single_node, train_records(out), strict=True):
        for key in ("loss", "loss_ce", "loss_focal", "loss_dice", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=2e-5), (a["step"], key)


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task").is_dir(), reason="finds the process to kill in /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_a_killed_or_hung_process_stops_the_other_with_one_line(tmp_path, how):
    # two nodes again (one process each), so that the other node's torchrun does not end its process
    # itself. SIGKILL: the peer's connection closes at once; SIGSTOP: the peer hangs, so the surviving
    # process waits in its next all-reduce until --dist-timeout (10 s) runs out.
    port, out = free_port(), tmp_path / "killed"
    flags = [*TINY, "--iters", "500", "--eval-period", "1000", "--checkpoint-period", "1000", "--dist-timeout", "10"]
    nodes = [subprocess.Popen(
        torchrun_command(REPO / "train.py", out, node_launch(node, port, "test_kill"), flags),
        env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for node in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and len(train_records(out)) >= 2):
            assert time.monotonic() < deadline and nodes[0].poll() is None, "training did not start"
            time.sleep(0.5)
        for pid in descendants(nodes[1].pid):  # node 1's training process, not its torchrun
            os.kill(pid, getattr(signal, how))
        start = time.monotonic()
        _, stderr = nodes[0].communicate(timeout=90)
        waited = time.monotonic() - start
    finally:
        for node in nodes:
            for pid in descendants(node.pid) if node.poll() is None else []:
                os.kill(pid, signal.SIGKILL)
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
            node.communicate()
    assert nodes[0].returncode != 0
    assert waited < 45, f"the surviving process took {waited:.0f} s to stop"
    lines = [line for line in stderr.splitlines() if "another process stopped or did not answer" in line]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error: process ") and "--resume" in lines[0]


def test_benchmark_ddp_flag_wants_two_processes_or_more(capsys):
    from tooling import benchmark

    with pytest.raises(SystemExit):
        benchmark.parse_args(["--ddp", "1", "--device", "cpu"])
    assert "--ddp N needs 2 <= N" in capsys.readouterr().err
    args = benchmark.parse_args(["--ddp", "2", "--device", "cpu", "--threads", "2"])
    assert args.threads_per_process == 1  # each of the 2 processes, in both runs, gets half the threads


def test_help_shows_the_multi_node_command_and_its_batch_splits_hold(capsys):
    import train

    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    help_text = capsys.readouterr().out
    for words in ("torchrun --nproc_per_node 8", "--nnodes 2 --nproc_per_node 8 --node_rank 0",
                  "--rdzv_backend c10d --rdzv_endpoint HOST:29400", "--node_rank 1", "--dist-timeout"):
        assert words in help_text, words
    # the splits the help and docs/training.md state: (processes, global batch, flags) -> (per process, accumulation)
    cuda = torch.device("cuda", 0)
    cases = [(1, 16, [], (2, 8)), (8, 16, [], (2, 1)), (16, 64, [], (2, 2)),
             (16, 16, ["--per-device-batch", "1"], (1, 1))]
    for processes, batch, flags, expected in cases:
        assert train.split_batch(batch, processes, cuda, train.parse_args(flags)) == expected
    with pytest.raises(SystemExit, match="batch size 16 != 16 processes x 2"):  # ADE20K on 16 GPUs without the flag
        train.split_batch(16, 16, cuda, train.parse_args([]))
    docs = (REPO / "docs" / "training.md").read_text()
    for words in ("--nnodes 2 --nproc_per_node 8 --node_rank 0 --rdzv_backend c10d --rdzv_endpoint HOST:29400",
                  "batch 16 = 1 process x 2 images x 8 accumulation steps", "batch 16 = 8 processes x 2 images x 1",
                  "batch 64 = 16 processes x 2 images x 2 accumulation steps", "batch 16 = 16 x 1 x 1"):
        assert words in docs, words
