"""The recipes run end to end on tiny offline models: with ``python``, and under ``accelerate launch``
with 2 processes (DDP, DeepSpeed ZeRO-2, ZeRO-3), saving a checkpoint and resuming from it.

Every run is a real subprocess of the recipe script, exactly as a user types it. A recipe writes
``run_info.json`` (world size, ZeRO stage, start and end global step), which is what the assertions
read: a launch that silently starts two independent single-process runs reports ``world_size`` 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
BIN = Path(sys.executable).parent

# Small enough for a 2-core CPU: a few rows, short sequences, 2-3 steps, no activation checkpointing.
TINY = [
    "--dtype", "float32",
    "--max_train_samples", "8",
    "--per_device_train_batch_size", "2",
    "--gradient_accumulation_steps", "1",
    "--activation_checkpointing", "false",
    "--logging_steps", "1",
    "--save_steps", "2",
    "--report_to", "none",
]
STAGE_TINY = {
    "sft": ["--max_length", "1024"],
    "gkd": ["--max_length", "1024", "--max_new_tokens", "8"],
    "grpo_mutant": ["--num_generations", "2", "--max_completion_length", "16"],
    "grpo_speed": ["--num_generations", "2", "--max_completion_length", "16"],
}


def recipe_env() -> dict:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        WANDB_DISABLED="true", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.pop("ACCELERATE_USE_CPU", None)  # the recipes must set it themselves
    return env


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_recipe(name: str, *args: str, launcher: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``recipes/<name>.py`` with python, or with ``accelerate launch`` and
    ``recipes/accelerate/<launcher>.yaml``."""
    script = str(RECIPES / f"{name}.py")
    if launcher is None:
        cmd = [sys.executable, script]
    else:
        config = str(RECIPES / "accelerate" / f"{launcher}.yaml")
        # a free rendezvous port per launch: under pytest-xdist two launches may run at once (default 29500)
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", config, "--main_process_port", str(free_port()),
               script]
    cmd += ["--config", str(RECIPES / "configs" / f"{name}.yaml"), *TINY, *STAGE_TINY[name], *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=recipe_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-6000:]}")
    return proc


def run_info(output_dir: Path) -> dict:
    return json.loads((output_dir / "run_info.json").read_text())


def assert_trained(output_dir: Path, *, steps: int, world_size: int = 1, start: int = 0, zero_stage=None):
    info = run_info(output_dir)
    assert info["world_size"] == world_size and info["accelerate_num_processes"] == world_size, info
    assert info["zero_stage"] == zero_stage, info
    assert (info["start_step"], info["global_step"]) == (start, steps), info
    assert (output_dir / "checkpoint-2" / "trainer_state.json").is_file()
    assert (output_dir / "config.json").is_file() or (output_dir / "adapter_config.json").is_file()
    return info


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny student and a different tiny teacher, saved like Hub checkpoints (same tokenizer)."""
    from fastdistill.testing import save_tiny_causal_lm

    root = tmp_path_factory.mktemp("models")
    return save_tiny_causal_lm(root / "student", seed=0), save_tiny_causal_lm(root / "teacher", seed=1)


# ----------------------------------------------------------------------------------------------- python
def test_sft_recipe_trains_checkpoints_and_resumes(tiny_models, tmp_path):
    student, _ = tiny_models
    out = tmp_path / "sft"
    run_recipe("sft", "--model_name_or_path", student, "--output_dir", str(out), "--max_steps", "2")
    assert_trained(out, steps=2)
    run_recipe("sft", "--model_name_or_path", student, "--output_dir", str(out), "--max_steps", "3",
               "--resume_from_checkpoint", "last")
    info = assert_trained(out, steps=3, start=2)
    assert info["resumed_from"].endswith("checkpoint-2")


def test_sft_recipe_qlora_trains_on_cpu(tiny_models, tmp_path):
    pytest.importorskip("bitsandbytes")
    student, _ = tiny_models
    out = tmp_path / "qlora"
    run_recipe("sft", "--model_name_or_path", student, "--output_dir", str(out), "--max_steps", "2",
               "--load_in_4bit", "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
               "--learning_rate", "1e-3")
    assert_trained(out, steps=2)
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "v_proj"}
    assert not (out / "model.safetensors").exists()  # only the adapters are saved


def trainer_log(output_dir: Path, checkpoint: str = "checkpoint-2") -> list[dict]:
    return json.loads((output_dir / checkpoint / "trainer_state.json").read_text())["log_history"]


# ------------------------------------------------------------------------------- accelerate launch
@pytest.mark.slow
def test_ddp_launch_forms_one_process_group_on_cpu(tiny_models, tmp_path):
    """Without ACCELERATE_USE_CPU (set by the recipe) this would be two independent runs, both exiting 0."""
    student, _ = tiny_models
    out = tmp_path / "sft"
    run_recipe("sft", "--model_name_or_path", student, "--output_dir", str(out), "--max_steps", "2", launcher="ddp")
    info = assert_trained(out, steps=2, world_size=2)
    assert info["distributed_type"] == "MULTI_CPU" and info["backend"] == "gloo"


@pytest.mark.slow
@pytest.mark.parametrize("launcher, stage", [("zero2", 2), ("zero3", 3)])
def test_recipes_chain_under_deepspeed_with_two_processes(tiny_models, tmp_path, launcher, stage):
    """SFT -> GKD (live teacher, prepared for DeepSpeed) -> GRPO, each with 2 processes, 2 steps with a
    checkpoint. Under ZeRO-3 (the stage that shards the teacher too) the whole chain, GKD and GRPO then
    resumed from the checkpoint to step 3; under ZeRO-2 SFT -> GKD. Each launch costs 30-60 s on 2 cores,
    so SFT's resume is the single-process test's. (grpo_speed runs the same module as grpo_mutant with
    another config; it runs in the pipeline test.)"""
    student, teacher = tiny_models
    inputs = {"sft": student, "gkd": str(tmp_path / "sft"), "grpo_mutant": str(tmp_path / "gkd")}
    # GRPO with beta 0: the JSD teacher is a frozen copy of the policy, whose forward runs on a background
    # thread while the rewards are computed (overlap_teacher_forward; under ZeRO-3 it runs afterwards)
    extra = {"gkd": ["--teacher_model_name_or_path", teacher], "sft": [], "grpo_mutant": ["--beta", "0"]}
    for name in ("sft", "gkd", "grpo_mutant")[: 3 if stage == 3 else 2]:
        out = tmp_path / name
        common = ["--model_name_or_path", inputs[name], "--output_dir", str(out), *extra[name]]
        run_recipe(name, *common, "--max_steps", "2", launcher=launcher)
        info = assert_trained(out, steps=2, world_size=2, zero_stage=stage)
        assert info["distributed_type"] == "DEEPSPEED" and info["backend"] == "gloo", info
        assert (out / "checkpoint-2" / "global_step2").is_dir()  # a DeepSpeed checkpoint

        if name == "sft" or stage == 2:
            continue
        run_recipe(name, *common, "--max_steps", "3", "--resume_from_checkpoint", "last", launcher=launcher)
        info = assert_trained(out, steps=3, start=2, world_size=2, zero_stage=stage)
        assert info["resumed_from"].endswith("checkpoint-2")
    assert any("loss/jsd" in entry for entry in trainer_log(tmp_path / "gkd"))
    if stage == 2:
        return
    assert any("rewards/mutant_kill" in entry for entry in trainer_log(tmp_path / "grpo_mutant"))
    assert any("jsd" in entry for entry in trainer_log(tmp_path / "grpo_mutant"))


@pytest.mark.slow
@pytest.mark.parametrize("launcher, stage", [("zero3", 3)])
def test_gkd_fused_loss_multi_process_matches_the_logits_path(tiny_models, tmp_path, launcher, stage):
    """With 2 processes under ZeRO-3, where the fused loss runs as the student head's forward so DeepSpeed
    gathers its weights once per step: same losses and the same parameter update as the logits path.
    (Under DDP the fused path is the single-process one, whose equality has its own tests; DDP launches
    are tested by test_ddp_launch_forms_one_process_group_on_cpu.)"""
    from safetensors.torch import load_file

    student, teacher = tiny_models
    logs, weights = {}, {}
    for fused in ("true", "false"):
        out = tmp_path / f"gkd_{fused}"
        proc = run_recipe("gkd", "--model_name_or_path", student, "--teacher_model_name_or_path", teacher,
                          "--output_dir", str(out), "--max_steps", "2", "--fused_loss", fused, "--lmbda", "0",
                          "--ce_lambda", "0.5", "--rkl_lambda", "0.25", "--learning_rate", "1e-3", launcher=launcher)
        info = assert_trained(out, steps=2, world_size=2, zero_stage=stage)
        assert info["fused_loss"] is (fused == "true") and "falling back" not in proc.stderr
        logs[fused] = [{k: v for k, v in e.items() if k.startswith("loss")} for e in trainer_log(out)]
        weights[fused] = load_file(str(out / "model.safetensors"))
    assert len(logs["true"]) == 2 and set(logs["true"][0]) == {"loss", "loss/ce", "loss/jsd", "loss/rkl"}
    for got, want in zip(logs["true"], logs["false"]):
        assert got == pytest.approx(want, rel=1e-5)
    initial = load_file(str(Path(student) / "model.safetensors"))
    moved = (weights["true"]["lm_head.weight"] - initial["lm_head.weight"]).abs().max()
    assert moved > 1e-4  # two real updates ...
    for name, value in weights["true"].items():  # ... identical on both paths
        assert (value - weights["false"][name]).abs().max() <= 1e-3 * moved, name


# ------------------------------------------------------------------------------- launch helpers
def test_device_defaults_without_gpu(monkeypatch):
    from fastdistill.trainers import launch

    monkeypatch.setattr(launch, "has_gpu", lambda: False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch.device_defaults() == {"bf16": False, "fp16": False}  # no backend in a single process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch.device_defaults() == {"bf16": False, "fp16": False, "ddp_backend": "gloo"}
    monkeypatch.setattr(launch, "has_gpu", lambda: True)
    monkeypatch.setattr(launch, "bf16_supported", lambda: True)
    assert launch.device_defaults() == {}


def test_device_defaults_fall_back_to_fp16_on_a_gpu_without_bf16(monkeypatch, caplog):
    from fastdistill.trainers import launch
    from fastdistill.trainers.utils import cpu_safe_precision

    monkeypatch.setattr(launch, "has_gpu", lambda: True)
    monkeypatch.setattr(launch, "bf16_supported", lambda: False)  # a V100 / T4
    with caplog.at_level("WARNING", logger=launch.logger.name):
        assert launch.device_defaults() == {"bf16": False, "fp16": True}
    assert "no bfloat16" in caplog.text
    args = type("Args", (), {"bf16": True, "fp16": False})()
    cpu_safe_precision(args)
    assert (args.bf16, args.fp16) == (False, True)


def test_grpo_config_parses_teacher_model_init_kwargs_from_json(tmp_path):
    from fastdistill import GRPOConfig

    args = GRPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none",
                      teacher_model_init_kwargs='{"dtype": "float32", "trust_remote_code": false}')
    assert args.teacher_model_init_kwargs == {"dtype": "float32", "trust_remote_code": False}


def test_configure_environment_keeps_user_settings(monkeypatch):
    from fastdistill.trainers import launch

    monkeypatch.setattr(launch, "has_gpu", lambda: False)
    for name in ("ACCELERATE_USE_CPU", "TORCH_EXTENSIONS_DIR", "ACCELERATE_USE_DEEPSPEED"):
        monkeypatch.delenv(name, raising=False)
    launch.configure_environment()
    assert os.environ["ACCELERATE_USE_CPU"] == "true" and os.environ["TORCH_EXTENSIONS_DIR"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/mine")
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # DeepSpeed sets up its own CPU group
    launch.configure_environment()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/mine" and "ACCELERATE_USE_CPU" not in os.environ


def test_parse_args_precedence_config_then_device_then_cli(monkeypatch, tmp_path):
    from trl import TrlParser

    from fastdistill import SFTConfig
    from fastdistill.trainers import launch

    monkeypatch.setattr(launch, "device_defaults", lambda: {"bf16": False, "learning_rate": 0.5})
    config = tmp_path / "c.yaml"
    config.write_text(f"output_dir: {tmp_path}\nbf16: true\nlearning_rate: 0.1\nweight_decay: 0.3\nreport_to: none\n")
    parser = TrlParser((SFTConfig,))
    (args,) = launch.parse_args(parser, ["--config", str(config)])
    assert (args.bf16, args.learning_rate, args.weight_decay) == (False, 0.5, 0.3)  # device beats the YAML
    (args,) = launch.parse_args(TrlParser((SFTConfig,)), ["--config", str(config), "--learning_rate", "0.7"])
    assert args.learning_rate == 0.7  # an explicit flag beats both


def test_last_checkpoint_and_resolve_resume(tmp_path):
    from types import SimpleNamespace

    from fastdistill.trainers.launch import last_checkpoint, resolve_resume

    assert last_checkpoint(tmp_path / "missing") is None
    for step, complete in ((2, True), (10, True), (12, False)):  # checkpoint-12 was cut short by a kill
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric, not lexical, order
    def args(value):
        return SimpleNamespace(resume_from_checkpoint=value, output_dir=str(tmp_path))
    assert resolve_resume(args("last")) == resolve_resume(args("true")) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(args(None)) is None
    assert resolve_resume(args(str(tmp_path / "checkpoint-2"))) == str(tmp_path / "checkpoint-2")
    assert resolve_resume(SimpleNamespace(resume_from_checkpoint="last", output_dir=str(tmp_path / "new"))) is None
    with pytest.raises(FileNotFoundError):
        resolve_resume(args(str(tmp_path / "nope")))
