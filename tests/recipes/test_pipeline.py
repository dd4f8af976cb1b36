"""recipes/pipeline.py: SFT -> GKD -> both GRPO branches from one GKD checkpoint, skip and resume."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_recipes import recipe_env

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "recipes" / "pipeline.py"


def load_pipeline():
    spec = importlib.util.spec_from_file_location("recipes_pipeline", PIPELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_commands_chain_outputs_and_branch_from_one_gkd_checkpoint(tmp_path):
    pipeline = load_pipeline()
    args = pipeline.parse_args(["--launcher", "zero3", "--num_processes", "2", "--student", "base",
                                "--grpo_args", "--num_generations 2", "--grpo_speed_args", "--seed 1"])
    commands = {stage: pipeline.stage_command(stage, args, tmp_path) for stage in pipeline.STAGES}

    def flag(cmd, name):
        return cmd[cmd.index(name) + 1]

    assert flag(commands["sft"], "--model_name_or_path") == "base"
    assert flag(commands["gkd"], "--model_name_or_path") == str(tmp_path / "sft")
    assert flag(commands["grpo_mutant"], "--model_name_or_path") == str(tmp_path / "gkd")
    assert flag(commands["grpo_speed"], "--model_name_or_path") == str(tmp_path / "gkd")
    for stage, cmd in commands.items():
        assert cmd[1:3] == ["launch", "--config_file"] and cmd[3].endswith("accelerate/zero3.yaml")
        assert flag(cmd, "--num_processes") == "2"
        assert flag(cmd, "--output_dir") == str(tmp_path / stage)
        assert flag(cmd, "--resume_from_checkpoint") == "last"
        assert flag(cmd, "--config").endswith(f"configs/{stage}.yaml")
        assert ("--num_generations" in cmd) == stage.startswith("grpo")
    assert commands["grpo_speed"][-2:] == ["--seed", "1"] and "--seed" not in commands["grpo_mutant"]


def run_pipeline(root: Path, student: str, teacher: str) -> subprocess.CompletedProcess:
    common = ("--dtype float32 --max_train_samples 4 --per_device_train_batch_size 2 --gradient_accumulation_steps 1 "
              "--activation_checkpointing false --logging_steps 1 --save_steps 2 --max_steps 3 --report_to none")
    cmd = [
        sys.executable, str(PIPELINE), "--output_root", str(root), "--student", student,
        "--common_args", common,
        "--sft_args", "--max_length 1024",
        "--gkd_args", f"--max_length 1024 --max_new_tokens 8 --teacher_model_name_or_path {teacher}",
        "--grpo_args", "--num_generations 2 --max_completion_length 16",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=recipe_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def info(root: Path, stage: str) -> dict:
    return json.loads((root / stage / "run_info.json").read_text())


@pytest.mark.slow
def test_pipeline_runs_all_stages_then_skips_and_resumes_an_interrupted_one(tmp_path):
    from fastdistill.testing import save_tiny_causal_lm

    student = save_tiny_causal_lm(tmp_path / "student", seed=0)
    teacher = save_tiny_causal_lm(tmp_path / "teacher", seed=1)
    root = tmp_path / "runs"

    # 1. everything runs, in order, each stage from the previous one's output
    run_pipeline(root, student, teacher)
    for stage in ("sft", "gkd", "grpo_mutant", "grpo_speed"):
        assert (root / stage / "pipeline_done.json").is_file(), stage
        assert (info(root, stage)["start_step"], info(root, stage)["global_step"]) == (0, 3), stage
        assert (root / stage / "checkpoint-2" / "trainer_state.json").is_file(), stage
    assert info(root, "grpo_mutant")["recipe"] == "grpo_mutant" and info(root, "grpo_speed")["recipe"] == "grpo_speed"
    markers = {stage: (root / stage / "pipeline_done.json").stat().st_mtime_ns
               for stage in ("sft", "gkd", "grpo_mutant")}

    # 2. the same command again: nothing to do
    proc = run_pipeline(root, student, teacher)
    assert proc.stderr.count("skipping") == 4

    # 3. grpo_speed "was killed" after its step-2 checkpoint: no marker, no final checkpoint or model
    shutil.rmtree(root / "grpo_speed" / "checkpoint-3")
    (root / "grpo_speed" / "pipeline_done.json").unlink()
    (root / "grpo_speed" / "model.safetensors").unlink()
    (root / "grpo_speed" / "run_info.json").unlink()
    proc = run_pipeline(root, student, teacher)
    assert proc.stderr.count("skipping") == 3 and "resuming from checkpoint-2" in proc.stderr
    resumed = info(root, "grpo_speed")
    assert (resumed["start_step"], resumed["global_step"]) == (2, 3)
    assert resumed["resumed_from"].endswith("grpo_speed/checkpoint-2")
    assert (root / "grpo_speed" / "model.safetensors").is_file()
    assert {s: (root / s / "pipeline_done.json").stat().st_mtime_ns for s in markers} == markers
