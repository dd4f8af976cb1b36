"""A GRPO run whose sandbox cannot start stops at its first step with the sandbox's message."""

import subprocess
import sys

import pytest
from datasets import Dataset

from fastdistill import GRPOConfig, GRPOTrainer
from fastdistill.rewards import (
    MutantKillReward,
    SandboxUnavailableError,
    clear_cache,
    close_idle_workers,
    sandbox,
)
from fastdistill.testing import tiny_causal_lm

CODE = "def add(a, b):\n    return a + b\n"
TESTS = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def test_grpo_stops_at_the_first_step_when_the_sandbox_cannot_start(tmp_path, monkeypatch):
    venv = tmp_path / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, capture_output=True)
    monkeypatch.setattr(sandbox, "SANDBOX_PYTHON", str(venv / "bin" / "python"))
    close_idle_workers()
    clear_cache()
    kill = MutantKillReward(max_mutants=3)

    def reward(prompts, completions, **kwargs):  # the tiny model writes no tests: score a real file instead
        return kill(prompts, [TESTS] * len(completions), **kwargs)

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Write tests {i}"}], "code": CODE}
                            for i in range(4)])
    model, tok = tiny_causal_lm(seed=0)
    args = GRPOConfig(output_dir=str(tmp_path / "out"), bf16=False, max_steps=2, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, report_to=[], save_strategy="no", logging_steps=1)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tok)
    try:
        with pytest.raises(SandboxUnavailableError, match="cannot import pytest"):
            trainer.train()
        assert trainer.state.global_step == 0  # not one optimizer step on made-up rewards
    finally:
        close_idle_workers()


def test_grpo_config_sandbox_settings_reach_the_default_rewards(tmp_path):
    from fastdistill.rewards import SandboxSettings

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": "Write tests"}], "code": CODE}] * 4)
    args = GRPOConfig(output_dir=str(tmp_path), bf16=False, max_steps=1, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, report_to=[], save_strategy="no",
                      sandbox='{"memory_mb": 640, "max_mutants": 7, "workers": 1}')  # as given on the command line
    assert args.sandbox["memory_mb"] == 640
    model, tok = tiny_causal_lm(seed=0)
    trainer = GRPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    reward = trainer.reward_funcs[0]
    assert reward.sandbox == SandboxSettings(memory_mb=640, max_mutants=7, workers=1)
    assert reward.components["mutant_kill"].max_mutants == 7
    assert all(c.sandbox.memory_mb == 640 and c.n_workers == 1 for c in reward.components.values())
    with pytest.raises(ValueError, match="unknown sandbox settings"):
        GRPOConfig(output_dir=str(tmp_path), bf16=False, sandbox={"memroy_mb": 1})
