"""Seconds per GRPO step: fastdistill's GRPOTrainer (real sandbox rewards, online JSD) vs TRL's, one run.

Same tiny-but-not-trivial Qwen2 model (hidden 256, 4 layers), same prompts (bundled examples),
same batch (8 completions = 2 prompts x 4 generations, up to 128 new tokens), CPU, one process.

Variants (each: a fresh model from the same seed, 1 warm-up step, then ``--steps`` timed steps):

* ``trl``: ``trl.GRPOTrainer`` with a constant reward (the floor: generation + GRPO loss).
* ``fastdistill``: ``fastdistill.GRPOTrainer``, default composite preset reward (``mutant``:
  kill rate + robustness + speed/stability, all from the sandbox) on the model's completions,
  ``jsd_lambda > 0`` (online JSD to the reference policy). Completions of an untrained tiny model
  are garbage, so this reward is cheap (nothing parses as a test file).
* ``fastdistill, reference tests as completions``: the same trainer, but the reward scores the
  bundled reference test files (made distinct per generation with a trailing comment, so nothing
  is a cache hit) in place of the completions: a stand-in for a trained model whose completions
  are real test files. This is the realistic reward cost.
* ``fastdistill, reference tests, overlapped teacher``: the same, with ``overlap_teacher_forward=True``
  (the teacher forward for the JSD term runs on a background thread beside the reward; the default
  does so only when the teacher is on a GPU): on 2 CPU cores the two compete for the cores, and the
  reward's wall time includes that.
* ``fastdistill, reference tests, per component``: the same, with the composite scoring its
  components one after another (``fused=False``: a sandbox call per component, the robustness
  base run apart from the kill run), as the reward did before it ran a batch in one call.

The composite reward runs with its defaults (recorded under ``reward_config`` in the JSON): all
components' sandbox work for a step in one call over warm workers, kill rate on up to 30 mutants,
robustness on one rewrite (every docstring flipped, locals renamed) paired with 5 of those mutants
(their rewrites, run only where the original was killed), speed over 3 repeats. The teacher forward
for the JSD term runs each distinct prompt once (the 4 generations of a prompt share its KV cache).

Step time = wall time between ``on_step_begin`` and ``on_step_end`` (median over the timed steps);
reward fraction = total reward-function wall time / total step time over the timed steps. Prints a table, writes
``benchmarks/results/bench_grpo_step.json``.
Usage: ``python benchmarks/bench_grpo_step.py [--steps 3]``
"""

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback

import trl
from fastdistill import GRPOConfig, GRPOTrainer
from fastdistill.data import generate_tests_prompt
from fastdistill.data.examples import load_examples
from fastdistill.rewards import clear_cache, composite_reward
from fastdistill.testing import tiny_causal_lm

MODEL_KW = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2)


VARIANTS = ("trl", "fastdistill", "fastdistill_ref_tests", "fastdistill_ref_tests_overlapped_teacher",
            "fastdistill_ref_tests_per_component")


class StepTimer(TrainerCallback):
    def __init__(self):
        self.steps, self._t = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._t)


class TimedReward:
    """Wraps a reward function, recording the wall time of every call (TRL calls it once per step)."""

    def __init__(self, fn, substitute_tests=False):
        self.fn, self.substitute_tests, self.calls = fn, substitute_tests, []
        self.__name__ = getattr(fn, "__name__", "reward")

    def __call__(self, prompts, completions, **kwargs):
        start = time.perf_counter()
        if self.substitute_tests:  # "trained model" stand-in: real, distinct test files
            completions = [f"```python\n{t}\n# generation {i} of step {len(self.calls)}\n```"
                           for i, t in enumerate(kwargs["tests"])]
        out = self.fn(prompts, completions, **kwargs)
        self.calls.append(time.perf_counter() - start)
        return out


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def dataset(n):
    rows = [{"prompt": generate_tests_prompt(e["code"]), "code": e["code"], "tests": e["tests"]}
            for e in load_examples()[:n]]
    return Dataset.from_list(rows)


def run_variant(kind, steps, max_completion_length):
    torch.manual_seed(0)
    model, tok = tiny_causal_lm(seed=0, **MODEL_KW)
    n_steps = steps + 1
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        common = dict(output_dir=out, bf16=False, max_steps=n_steps, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=max_completion_length, report_to=[], save_strategy="no",
                      logging_steps=1, learning_rate=1e-5, seed=0, dataloader_num_workers=0,
                      disable_tqdm=True)
        data = dataset(2 * n_steps)
        if kind == "trl":
            reward = TimedReward(constant_reward)
            trainer = trl.GRPOTrainer(model=model, reward_funcs=[reward], args=trl.GRPOConfig(**common),
                                      train_dataset=data, processing_class=tok, callbacks=[timer])
        else:
            reward = TimedReward(composite_reward(preset="mutant", code_column="code",
                                                  fused=kind != "fastdistill_ref_tests_per_component"),
                                 substitute_tests=kind.startswith("fastdistill_ref_tests"))
            args = GRPOConfig(**common, jsd_lambda=0.1, reward_preset="mutant",
                              overlap_teacher_forward=True if kind.endswith("overlapped_teacher") else None)
            trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[timer])
        clear_cache()
        trainer.train()
    step_s, reward_s = timer.steps[1:], reward.calls[1:]  # drop the warm-up step
    comp_lengths = [h.get("completions/mean_length") for h in trainer.state.log_history
                    if "completions/mean_length" in h]
    rewards = [h.get("reward") for h in trainer.state.log_history if "reward" in h]
    return {"variant": kind, "steps_timed": len(step_s), "step_s": step_s, "median_step_s": statistics.median(step_s),
            "reward_s": reward_s, "median_reward_s": statistics.median(reward_s),
            "reward_fraction": sum(reward_s) / sum(step_s),
            "mean_completion_length": statistics.fmean(comp_lengths[1:]) if len(comp_lengths) > 1 else None,
            "mean_reward": statistics.fmean(rewards[1:]) if len(rewards) > 1 else None}


def reward_config():
    """The composite reward's settings, as the fastdistill variants ran them."""
    reward = composite_reward(preset="mutant", code_column="code")
    config = {"fused_single_sandbox_call": reward._fusable(), "keep_warm": reward.keep_warm,
              "n_workers": reward.n_workers}
    for name, component in reward.components.items():
        keys = ("repeats",) if name == "speed_stability" else ("max_mutants", "n_variants", "flip_docstrings")
        config[name] = {key: getattr(component, key) for key in keys if hasattr(component, key)}
    return config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-completion-length", type=int, default=128)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "bench_grpo_step.json"))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    # One torch thread: on 2 shared, loaded cores two OpenMP threads stall on each other (steps varied
    # 1.4-31 s); the second core is left to the sandbox workers, which is how rewards overlap anyway.
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    results = [run_variant(kind, args.steps, args.max_completion_length)
               for kind in VARIANTS]
    base = results[0]["median_step_s"]
    for r in results:
        r["overhead_vs_trl"] = r["median_step_s"] / base
    report = {
        "model": {"arch": "Qwen2 (fastdistill.testing.tiny_causal_lm)", **MODEL_KW},
        "batch": {"completions_per_step": 8, "num_generations": 4, "max_completion_length": args.max_completion_length},
        "jsd_lambda": 0.1, "reward_preset": "mutant", "steps_timed": args.steps, "results": results,
        "reward_config": reward_config(),
        "targets": {"overhead_vs_trl": 1.5, "reward_fraction": 0.30},
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "torch": torch.__version__, "trl": trl.__version__,
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
    }
    print(f"{'variant':36s} {'s/step':>8s} {'reward s':>9s} {'reward %':>9s} {'vs TRL':>7s} {'compl len':>10s}")
    for r in results:
        print(f"{r['variant']:36s} {r['median_step_s']:8.2f} {r['median_reward_s']:9.3f} "
              f"{100 * r['reward_fraction']:8.1f}% {r['overhead_vs_trl']:6.2f}x "
              f"{r['mean_completion_length'] or 0:10.1f}")
    print(f"load {load_start[0]:.1f} -> {report['load_average_at_end'][0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
