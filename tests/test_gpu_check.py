"""tooling/gpu_check.py: the driver's time boxes and skips, and the whole check on CPU with --quick.

Reading order: the driver on made-up steps (a step that sleeps past its box, the next one still runs) ->
the boxes on CUDA fit 8 minutes -> the quick CPU run of `bash tooling/gpu_check.sh` end to end (about
three minutes on two cores, kept in CI), so the script the GPU session will run cannot rot.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tooling import gpu_check

PY = sys.executable


def test_a_step_past_its_box_is_timed_out_and_the_next_step_still_runs(tmp_path):
    figures = 'print("' + gpu_check.FIGURES + '{\\"x\\": 1.5}")'
    lines = []
    entries = gpu_check.run_steps([
        ("sleepy", [PY, "-c", "import time; print('started', flush=True); time.sleep(60)"], 1, None),
        ("broken", [PY, "-c", "raise SystemExit(3)"], 20, None),
        ("next", [PY, "-c", figures], 20, None),
        ("gpu_only", [PY, "-c", "pass"], 20, "needs CUDA"),
    ], tmp_path, echo=lines.append)
    by_name = {e["name"]: e for e in entries}
    assert [e["status"] for e in entries] == ["timed_out", "failed", "ok", "skipped: needs CUDA"]
    assert by_name["sleepy"]["wall_s"] < 15  # killed by its 1 s box, not by the 60 s sleep
    assert by_name["broken"]["returncode"] == 3
    assert by_name["next"]["figures"] == {"x": 1.5}
    assert by_name["gpu_only"]["wall_s"] == 0.0
    log = (tmp_path / "gpu_check.log").read_text()
    assert "started" in log and all(f"===== {name}" in log for name in by_name)  # the killed step's output is kept
    assert len(lines) == 4 and lines[0].startswith("sleepy") and "timed_out" in lines[0]


def test_the_default_cuda_boxes_fit_eight_minutes_and_skips_name_their_need():
    assert sum(step.box_cuda_s for step in gpu_check.STEPS) <= gpu_check.CUDA_BOX_LIMIT_S
    assert set(gpu_check.STEP_BODIES) == {step.name for step in gpu_check.STEPS}
    ddp2 = next(s for s in gpu_check.STEPS if s.name == "ddp2")
    assert gpu_check.why_skipped(ddp2, "cpu", 0) == "needs CUDA"
    assert gpu_check.why_skipped(ddp2, "cuda", 1) == "needs 2 GPUs"
    assert gpu_check.why_skipped(ddp2, "cuda", 2) is None
    assert gpu_check.parse_figures("noise\n" + gpu_check.FIGURES + '{"a": 1}\n') == {"a": 1}
    assert gpu_check.parse_figures(gpu_check.FIGURES + "{broken") == {}


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_quick_cpu_run_writes_every_steps_figures(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(["bash", "tooling/gpu_check.sh", str(out), "--device", "cpu", "--quick"],
                            cwd=gpu_check.REPO, capture_output=True, text=True, env={**os.environ, "PYTHON": PY},
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == [step.name for step in gpu_check.STEPS]
    assert all(step["status"] for step in steps.values()) and (out / "gpu_check.log").stat().st_size > 0
    needs_cuda = {s.name for s in gpu_check.STEPS if s.needs}
    for name, step in steps.items():
        assert step["status"] == ("skipped: needs CUDA" if name in needs_cuda else "ok"), (name, step)
        assert step["name"] in result.stdout  # one summary line per step

    assert steps["cuda_tests"]["figures"]["passed"] > 0
    assert all(is_number(steps["benchmark_fp32"]["figures"]["rows"][0][key])
               for key in ("infer_img_per_s", "train_img_per_s"))
    for name in ("recipe_r50", "recipe_swin_t"):
        figures = steps[name]["figures"]
        assert all(is_number(loss) for loss in figures["losses"]) and len(figures["losses"]) == figures["iters"]
        assert figures["loss_last"] < figures["loss_first"] and is_number(figures["step_s"])
    resume = steps["resume"]["figures"]
    assert resume["killed"] and resume["killed_at_step"] == resume["iters"] // 2 and resume["bit_exact"]
    assert resume["losses_straight"] == resume["losses_resumed"]
    for mode in ("single", "tta"):
        assert is_number(steps["infer"]["figures"][mode]["wall_s"])
        assert steps["infer"]["figures"][mode]["peak_rss_mb"] > 0
