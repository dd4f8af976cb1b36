"""``fastdistill demo``: the offline end-to-end run that is the README's main command.

Until the full pipeline demo lands, this runs the foundation on an embedded default: a tiny
offline teacher and a smaller student, SFT of the student on reference answers, then GKD to the
teacher (live teacher, CE + JSD), printing the losses of each stage.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

logger = logging.getLogger(__name__)

DEFAULT_ROWS = [
    {
        "prompt": f"Write a pytest test for add({i}, {i + 1}) from module solution.",
        "completion": f"from solution import add\n\n\ndef test_add():\n    assert add({i}, {i + 1}) == {2 * i + 1}\n",
    }
    for i in range(16)
]


def _stage_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def run_foundation_demo(output_dir: str, steps: int = 30, seed: int = 0) -> dict:
    """Tiny SFT -> GKD run; returns the per-step losses of both stages."""
    import torch

    from fastdistill import GKDConfig, GKDTrainer, SFTConfig, SFTTrainer
    from fastdistill.data import load_supervised_dataset
    from fastdistill.testing import tiny_causal_lm

    dataset = load_supervised_dataset(DEFAULT_ROWS)
    teacher, tokenizer = tiny_causal_lm(seed=seed + 1, hidden_size=96, intermediate_size=192)
    student, _ = tiny_causal_lm(seed=seed, tokenizer=tokenizer, hidden_size=48, intermediate_size=96)
    common = dict(bf16=False, per_device_train_batch_size=8, logging_steps=1, report_to=[], save_strategy="no",
                  max_length=128, seed=seed, disable_tqdm=True)
    # the teacher first learns the reference answers (that is what a teacher is here)
    teacher_trainer = SFTTrainer(model=teacher, args=SFTConfig(output_dir=f"{output_dir}/teacher", max_steps=steps,
                                 learning_rate=3e-3, **common), train_dataset=dataset, processing_class=tokenizer)
    teacher_trainer.train()
    sft = SFTTrainer(model=student, args=SFTConfig(output_dir=f"{output_dir}/sft", max_steps=steps // 2,
                     learning_rate=3e-3, **common), train_dataset=dataset, processing_class=tokenizer)
    sft.train()
    gkd = GKDTrainer(model=sft.model, teacher_model=teacher_trainer.model, train_dataset=dataset,
                     processing_class=tokenizer, args=GKDConfig(output_dir=f"{output_dir}/gkd", max_steps=steps,
                     learning_rate=3e-3, lmbda=0.0, ce_lambda=0.5, **common))
    gkd.train()
    torch.manual_seed(seed)
    return {"teacher_sft": _stage_losses(teacher_trainer), "student_sft": _stage_losses(sft), "gkd": _stage_losses(gkd)}


def main(argv: list[str] | None = None, command: str = "demo") -> int:
    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default=None, help="where checkpoints go (default: a temporary directory)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per stage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        losses = run_foundation_demo(args.output_dir or tmp, steps=args.steps, seed=args.seed)
    for stage, values in losses.items():
        sys.stdout.write(f"{stage:<12} loss {values[0]:.4f} -> {values[-1]:.4f} over {len(values)} steps\n")
    return 0
