"""``fastdistill demo``: the offline end-to-end run that is the README's main command.

**The task** is a generated curriculum of *function families* (:data:`FAMILIES`: threshold above /
below, add a constant, clamp, prefix check, list membership), built so that tiny random-weight
models from :mod:`fastdistill.testing` can learn it in minutes on a CPU: a good test is written by
copying the function name and the constant from the prompt into boundary checks. Instances are
named ``<family>_<made-up word>`` with a constant in 10..99; the held-out instances use words and
constants that no training instance uses, so evaluation is on unseen code. The training
reference tests come in three styles: *weak* (one check that misses boundary mutants), *strong*
(boundary checks) and *loop* (an exhaustive loop over ~100k inputs against the code's own
expression: the same kill rate as strong, several times slower). (The bundled hand-written examples are not used:
38 of them are too few for a tiny model to learn to test arbitrary unseen functions.)

1. **Teacher.** A tiny random model cannot write tests, so the teacher first *learns the
   reference tests of the training split by SFT* (that is what a teacher is here).
2. **Curation** of the teacher's outputs on the training prompts: canonicalize -> SHA-256 hash ->
   exact dedup -> rule filter (parses as Python) -> run the tests and mutation-score them ->
   score -> keep_by_score; manifest, quality report and timing report go to ``curation/``.
3. **Student** (smaller): SFT on the curated data, then GKD to the live teacher (CE + JSD), then
   two GRPO branches from the same GKD checkpoint, rewarded by really running the generated
   tests: "mutant" (mutant-kill preset, higher temperature, longer completions) and "speed"
   (speed/stability preset, lower temperature, shorter completions).
4. **Evaluation** of base / SFT / GKD / GRPO-mutant / GRPO-speed (and the teacher, for reference)
   on the HELD-OUT instances only: generate once per student (greedy), then score the same
   completions for mutation kill rate and for test runtime/stability. ``report.json`` holds the
   per-example rows whose means are the headline numbers, ``report.md`` the table, ``pareto.png``
   the plot.

Seeds are fixed: two runs produce the same teacher, SFT and GKD models and completions. The GRPO
rewards include measured test runtimes, so the GRPO students (and every runtime) can differ
slightly between runs; the two comparisons the demo exists for are built to hold by a wide margin
(see the README for two runs side by side).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo", "rename_public_names", "main"]

# words the renaming draws new public names from (also in the tokenizer's corpus)
NAME_WORDS = (
    "count parse merge find split join sort make get check load scan fold pick sum total value item text word "
    "list pair key node line path range block chunk token score grade index size limit shift swap trim pack map "
    "table queue cache buffer entry digit char string number record field group level depth width order stamp window"
).split()


# ------------------------------------------------------------------------------------------------
# synthetic function families (the task the tiny models can generalise on)
# ------------------------------------------------------------------------------------------------

# Family instances are named ``<family>_<word>`` with a made-up word of two syllables (one token
# each in the demo's tokenizer): so many distinct names that a model cannot memorise them and has to
# copy the name from the prompt. Held-out words are combinations no training instance uses.
SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def family_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct made-up words of two :data:`SYLLABLES`, deterministic for ``seed``."""
    rng, words = random.Random(seed), []
    seen = set()
    while len(words) < n:
        word = "".join(rng.choice(SYLLABLES) for _ in range(2))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


# name prefix: code template, strong asserts, weak asserts, the check of the exhaustive loop ({n}:
# function name, {w}: word, {c}: constant, {v}: the loop variable). Constants in tests are written as
# expressions of the constant in the code ({c} + 1), so a test is written by copying tokens from the
# prompt, without arithmetic.
FAMILIES = {
    "above": ("def {n}(x):\n    return x > {c}\n",
              ["assert {n}({c} + 1)", "assert not {n}({c})"], ["assert {n}({c} + 1)"],
              "assert {n}(v) == (v > {c})"),
    "below": ("def {n}(x):\n    return x < {c}\n",
              ["assert {n}({c} - 1)", "assert not {n}({c})"], ["assert {n}({c} - 1)"],
              "assert {n}(v) == (v < {c})"),
    "add": ("def {n}(x):\n    return x + {c}\n",
            ["assert {n}(0) == {c}", "assert {n}({c}) == {c} + {c}"], ["assert {n}(0) > 0"],
            "assert {n}(v) == v + {c}"),
    "clamp": ("def {n}(x):\n    return min(x, {c})\n",
              ["assert {n}({c} + 1) == {c}", "assert {n}({c}) == {c}"], ["assert {n}(0) == 0"],
              "assert {n}(v) == min(v, {c})"),
    "starts": ("def {n}(text):\n    return text.startswith(\"{w}\")\n",
               ["assert {n}(\"{w}\")", "assert not {n}(\"\")"], ["assert {n}(\"{w}\")"],
               "assert {n}(\"{w}\" + str(v)) and not {n}(str(v))"),
    "has": ("def {n}(items):\n    return {c} in items\n",
            ["assert {n}([{c}])", "assert not {n}([{c} + 1])"], ["assert not {n}([])"],
            "assert {n}([v]) == (v == {c})"),
}
# reference-test styles of the training corpus: weak (one check that misses boundary mutants),
# strong (boundary checks) and loop (an exhaustive check of LOOP_RANGE inputs against the code's own
# expression: kills as much as strong, but runs ~100k calls, several times slower). The loop style
# is what gives the two GRPO branches something to trade: the mutant reward is indifferent between
# loop and strong, the speed reward is not.
STYLES = {"weak": 0.45, "strong": 0.1, "loop": 0.45}
LOOP_RANGE = 99999


def family_test(family: str, word: str, const: int, style: str) -> str:
    """The reference pytest file of one family instance in one style (``weak``, ``strong`` or ``loop``)."""
    _, strong, weak, loop = FAMILIES[family]
    name = f"{family}_{word}"
    head = f"from solution import {name}\n\n\n"
    if style == "loop":
        check = loop.format(n=name, w=word, c=const)
        return head + f"def test_{name}():\n    for v in range({LOOP_RANGE}):\n        {check}\n"
    asserts = [a.format(n=name, w=word, c=const) for a in (weak if style == "weak" else strong)]
    return head + f"def test_{name}():\n" + "".join(f"    {a}\n" for a in asserts)


def family_examples(seed: int = 0, n_train: int = 360, n_held_out: int = 24,
                    styles: dict | None = None, n_extra: int = 0):
    """Generated (train, held_out) family instances: rows with name, family, style, code, tests.

    Words and constants (10..99) are split before anything is drawn: a held-out instance has a word
    no training instance uses and a constant no training instance uses. Training tests are drawn
    from ``styles`` (default :data:`STYLES`); held-out rows carry the strong reference tests, which
    no model sees (evaluation only shows the code). With ``n_extra`` a third list is returned:
    further instances drawn like the training ones (training-pool constants, fresh words that are
    neither training nor held-out words), used as GRPO prompts the SFT data never showed.
    """
    rng = random.Random(seed)
    styles = styles or STYLES
    words = family_words(n_train + n_held_out + n_extra, seed)
    consts = list(range(10, 100))
    rng.shuffle(consts)
    n_held_c = len(consts) // 5
    splits = {"held_out": (words[:n_held_out], consts[:n_held_c]),
              "train": (words[n_held_out:n_held_out + n_train], consts[n_held_c:]),
              "extra": (words[n_held_out + n_train:], consts[n_held_c:])}
    out = {}
    for split, n in (("train", n_train), ("held_out", n_held_out), ("extra", n_extra)):
        split_words, split_consts = splits[split]
        rows = []
        for i in range(n):
            family = list(FAMILIES)[i % len(FAMILIES)] if split == "held_out" else rng.choice(list(FAMILIES))
            word, const = split_words[i], rng.choice(split_consts)
            style = rng.choices(list(styles), weights=list(styles.values()))[0] if split == "train" else "strong"
            rows.append({"name": f"{family}_{word}_{const}", "family": family, "style": style,
                         "code": FAMILIES[family][0].format(n=f"{family}_{word}", w=word, c=const),
                         "tests": family_test(family, word, const, style)})
        out[split] = rows
    return (out["train"], out["held_out"]) + ((out["extra"],) if n_extra else ())


@dataclass
class DemoConfig:
    """Sizes and settings of the demo; :meth:`quick` is the reduced version used by the tests."""

    seed: int = 0
    vocab_size: int = 1024
    renames: int = 0                      # renamed copies of each training example (teacher and student data)
    max_length: int = 256
    n_train: int = 360                    # generated training family instances
    n_held_out: int = 24                  # generated held-out family instances (unseen names and constants)
    n_grpo: int = 100                     # fresh training-pool instances used as GRPO prompts (not in SFT data)
    n_seen_eval: int = 0                  # training instances also scored, reported apart as "seen code"
    teacher: dict = field(default_factory=lambda: dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2))
    student: dict = field(default_factory=lambda: dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2))
    teacher_steps: int = 700
    teacher_lr: float = 5e-3
    sft_steps: int = 700
    gkd_steps: int = 40
    lr: float = 5e-3
    batch_size: int = 16
    grpo_steps: int = 50
    grpo_lr: float = 2e-4
    grpo_generations: int = 8
    grpo_prompts_per_step: int = 2
    mutant_temperature: float = 0.8
    mutant_max_tokens: int = 96
    speed_temperature: float = 0.5
    speed_max_tokens: int = 40
    eval_max_tokens: int = 96
    max_mutants: int = 15
    speed_repeats: int = 5
    workers: int = 2
    threads: int | None = 1               # torch CPU threads (1 leaves a core to the test sandboxes)

    @classmethod
    def quick(cls) -> "DemoConfig":
        """A reduced run (a minute or two on 2 cores) with the same stages and report."""
        return cls(n_seen_eval=2, teacher=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=1),
                   student=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1), teacher_steps=6,
                   sft_steps=3, gkd_steps=2, grpo_steps=1, mutant_max_tokens=24, speed_max_tokens=16,
                   eval_max_tokens=24, max_mutants=5, speed_repeats=2, n_train=12, n_held_out=3, vocab_size=512,
                   batch_size=8, n_grpo=8)


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------

def public_names(tests: str, module_name: str = "solution") -> list[str]:
    """Names the test file imports from the module under test (``from solution import a, b``)."""
    names = []
    for match in re.finditer(rf"^from {re.escape(module_name)} import (.+)$", tests, re.M):
        names += [n.strip() for n in match.group(1).split(",") if n.strip()]
    return names


def rename_public_names(code: str, tests: str, seed: int) -> tuple[str, str]:
    """Rename the imported public names consistently in ``code`` and ``tests`` (semantics preserved).

    New names are built from :data:`NAME_WORDS` (snake_case for functions, CamelCase for classes).
    A name is replaced wherever it is not part of a longer alphanumeric word, so ``test_clamp``
    becomes ``test_<new>`` too.
    """
    rng = random.Random(seed)
    taken = set(re.findall(r"\w+", code + tests))
    for name in sorted(public_names(tests), key=len, reverse=True):
        while True:
            parts = [rng.choice(NAME_WORDS) for _ in range(rng.choice((1, 2, 2, 3)))]
            new = "".join(p.capitalize() for p in parts) if name[:1].isupper() else "_".join(parts)
            if new not in taken:
                break
        taken.add(new)
        pattern = re.compile(r"(?<![A-Za-z0-9])" + re.escape(name) + r"(?![A-Za-z0-9])")
        code, tests = pattern.sub(new, code), pattern.sub(new, tests)
    return code, tests


def _prompt(code: str) -> list[dict]:
    from fastdistill.data import generate_tests_prompt

    return generate_tests_prompt(code, module_name="solution", system=False)


def _with_renames(pairs: list[dict], renames: int, seed: int) -> list[dict]:
    """Each (name, code, tests) row plus ``renames`` renamed copies, as prompt/completion rows."""
    rows = []
    for i, pair in enumerate(pairs):
        variants = [(pair["code"], pair["tests"])]
        variants += [rename_public_names(pair["code"], pair["tests"], seed * 100_003 + i * 101 + k + 1)
                     for k in range(renames)]
        for k, (code, tests) in enumerate(variants):
            rows.append({"name": pair["name"] + ("" if k == 0 else f"~{k}"), "code": code, "prompt": _prompt(code),
                         "completion": tests})
    return rows


def _sft_dataset(rows: list[dict]):
    from fastdistill.data import load_supervised_dataset

    return load_supervised_dataset([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------

def _common_args(cfg: DemoConfig, out: Path, name: str, steps: int, lr: float) -> dict:
    return dict(output_dir=str(out / "checkpoints" / name), max_steps=steps, learning_rate=lr, bf16=False,
                per_device_train_batch_size=cfg.batch_size, logging_steps=max(1, steps // 10), report_to=[],
                save_strategy="no", seed=cfg.seed, lr_scheduler_type="cosine", warmup_steps=min(10, steps // 10),
                disable_tqdm=False)


def _losses(trainer) -> list[float]:
    return [round(float(h["loss"]), 4) for h in trainer.state.log_history if "loss" in h]


def _curate(teacher, tokenizer, train: list[dict], cfg: DemoConfig, out: Path) -> tuple[list[dict], dict]:
    """Teacher generations on the training prompts -> curation steps -> kept rows + summary."""
    from datasets import Dataset

    from fastdistill.curation import (canonicalize, compute_hash, deduplicate, keep_by_score, quality_report,
                                      rule_filter, score_from_exec_eval, tests_exec_eval, timing_report,
                                      write_manifest)
    from fastdistill.evaluation import generate
    from fastdistill.rewards.functions import extract_test_code

    cur_dir = out / "curation"
    t0 = time.perf_counter()
    gens = generate(teacher, [{"name": ex["name"], "code": ex["code"], "prompt": _prompt(ex["code"])} for ex in train],
                    cur_dir / "teacher_generations.jsonl", tokenizer=tokenizer, max_new_tokens=cfg.eval_max_tokens,
                    batch_size=16, seed=cfg.seed)
    steps = [{"name": "teacher_generate", "rows_in": len(train), "rows_out": len(gens),
              "time_s": time.perf_counter() - t0, "params": {"max_new_tokens": cfg.eval_max_tokens, "greedy": True}}]
    input_ds = Dataset.from_list([{"name": g["name"], "code": g["code"],
                                   "tests": extract_test_code(g["completion"]) or g["completion"]} for g in gens])
    ds = input_ds

    def step(name, fn, **params):
        nonlocal ds
        rows_in, t = len(ds), time.perf_counter()
        ds = fn(ds, **params)
        steps.append({"name": name, "rows_in": rows_in, "rows_out": len(ds), "time_s": time.perf_counter() - t,
                      "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, list))}})

    step("canonicalize", canonicalize, columns="tests", whitespace="strip")
    step("compute_hash", compute_hash, columns=["code", "tests"])
    step("deduplicate", deduplicate, column="hash")
    step("rule_filter", rule_filter, column="tests", parses_as="python", min_len=20)
    step("tests_exec_eval", tests_exec_eval, max_mutants=cfg.max_mutants, seed=cfg.seed, num_proc=cfg.workers)
    evaluated = ds
    step("score_from_exec_eval", score_from_exec_eval)
    evaluated = ds
    step("keep_by_score", keep_by_score, min_score=0.5)
    write_manifest(cur_dir, input_ds=input_ds, output_ds=ds, steps=steps, input_source="teacher generations",
                   config={"seed": cfg.seed, "max_mutants": cfg.max_mutants})
    quality = quality_report(ds, steps=steps[1:], out_dir=cur_dir, evaluated_ds=evaluated)
    timing = timing_report(steps, out_dir=cur_dir)
    kept = [{"name": r["name"], "code": r["code"], "tests": r["tests"]} for r in ds]
    summary = {"rows_in": len(gens), "rows_kept": len(kept), "metrics": quality["metrics"],
               "steps": [{k: s[k] for k in ("name", "rows_in", "rows_out")} | {"time_s": round(s["time_s"], 3)}
                         for s in steps], "total_time_s": round(timing["total_time_s"], 2)}
    return kept, summary


def _grpo(model, tokenizer, train: list[dict], cfg: DemoConfig, out: Path, branch: str):
    from datasets import Dataset

    from fastdistill import GRPOConfig, GRPOTrainer
    from fastdistill.rewards import composite_reward

    temperature = cfg.mutant_temperature if branch == "mutant" else cfg.speed_temperature
    max_tokens = cfg.mutant_max_tokens if branch == "mutant" else cfg.speed_max_tokens
    rows = _with_renames([{"name": ex["name"], "code": ex["code"], "tests": ex["tests"]} for ex in train],
                         cfg.renames, cfg.seed + 7)
    ds = Dataset.from_list([{"prompt": r["prompt"], "code": r["code"]} for r in rows]).shuffle(seed=cfg.seed)
    reward = composite_reward(preset=branch, max_mutants=cfg.max_mutants, n_workers=cfg.workers)
    args = GRPOConfig(**{**_common_args(cfg, out, f"grpo_{branch}", cfg.grpo_steps, cfg.grpo_lr),
                         "per_device_train_batch_size": cfg.grpo_generations * cfg.grpo_prompts_per_step,
                         "logging_steps": 1, "warmup_steps": 0, "lr_scheduler_type": "constant"},
                      num_generations=cfg.grpo_generations, max_completion_length=max_tokens,
                      temperature=temperature, reward_preset=branch, beta=0.0)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.train()
    rewards = [round(float(h["reward"]), 4) for h in trainer.state.log_history if "reward" in h]
    return trainer.model, {"rewards": rewards, "temperature": temperature, "max_completion_length": max_tokens,
                           "preset": branch}


def _test_shape(completion: str) -> tuple[int, int, int]:
    """(test functions, assert statements, loops) of the pytest file in a completion; zeros if there is none."""
    import ast

    from fastdistill.rewards.functions import extract_test_code

    tests = extract_test_code(completion)
    if tests is None:
        return 0, 0, 0
    nodes = list(ast.walk(ast.parse(tests)))
    return (sum(isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in nodes),
            sum(isinstance(n, ast.Assert) for n in nodes),
            sum(isinstance(n, (ast.For, ast.While)) for n in nodes))


def shape_of_tests(completion: str) -> tuple[int, int]:
    """(test functions, assert statements) of the pytest file in a completion; (0, 0) if there is none."""
    return _test_shape(completion)[:2]


def _evaluate(name, model, tokenizer, held_out, cfg, out, max_new_tokens):
    from fastdistill.evaluation import generate, score_mutation, score_speed

    # the prompt the models were trained with (generate() would otherwise build one with a system message)
    rows = [{"name": ex["name"], "code": ex["code"], "prompt": _prompt(ex["code"])} for ex in held_out]
    gens = generate(model, rows, out / "generations" / f"{name}.jsonl", tokenizer=tokenizer,
                    max_new_tokens=max_new_tokens, batch_size=16, seed=cfg.seed)
    mut = score_mutation(gens, max_mutants=cfg.max_mutants, n_workers=cfg.workers)
    spd = score_speed(gens, repeats=cfg.speed_repeats, n_workers=cfg.workers)
    shapes = [_test_shape(g["completion"]) for g in gens]  # each completion parsed once
    return {"kill_rate": mut["kill_rate"], "pass_rate": mut["pass_rate"], "extract_rate": mut["extract_rate"],
            "runtime_s": spd["runtime_s"], "runtime_cv": spd["cv"], "stable_rate": spd["stable_rate"],
            "n": mut["n"], "n_timed": spd["n_timed"], "max_new_tokens": max_new_tokens,
            "tests_per_file": _mean([tests for tests, _, _ in shapes]),
            "asserts_per_file": _mean([asserts for _, asserts, _ in shapes]),
            "loops_per_file": _mean([float(loops > 0) for _, _, loops in shapes]),
            "completions": [g["completion"] for g in gens], "mutation_rows": mut["rows"], "speed_rows": spd["rows"]}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

STUDENTS = ("base", "sft", "gkd", "grpo_mutant", "grpo_speed")


def _mean(values):
    return sum(values) / len(values) if values else None


def _fmt(v, spec=".3f", scale=1.0):
    return "n/a" if v is None else format(v * scale, spec)


def acceptance(students: dict, where: str = "held-out") -> dict:
    """The two comparisons the demo is meant to show, stated from the measured numbers."""
    mut, sft, spd = students["grpo_mutant"], students["sft"], students["grpo_speed"]
    kill_ok = mut["kill_rate"] is not None and sft["kill_rate"] is not None and mut["kill_rate"] > sft["kill_rate"]
    speed_ok = (spd["runtime_s"] is not None and mut["runtime_s"] is not None and spd["runtime_s"] < mut["runtime_s"])
    return {
        "grpo_mutant_kill_rate_above_sft": bool(kill_ok),
        "kill_rate_statement": (f"GRPO-mutant {where} kill rate {_fmt(mut['kill_rate'])} "
                                f"vs SFT {_fmt(sft['kill_rate'])}: "
                                + ("higher, as intended." if kill_ok else "NOT higher in this run.")),
        "grpo_speed_faster_than_mutant": bool(speed_ok),
        "speed_statement": (f"GRPO-speed mean test runtime {_fmt(spd['runtime_s'], '.3f', 1e3)} ms "
                            f"(over {spd['n_timed']} passing test files) vs GRPO-mutant "
                            f"{_fmt(mut['runtime_s'], '.3f', 1e3)} ms (over {mut['n_timed']}): "
                            + ("faster, as intended." if speed_ok else "NOT faster in this run (or not measurable).")),
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("held-out examples (the evaluation)", {**report["students"], "teacher": report["teacher"]})]
    if report.get("seen_code"):
        panels.append(("seen training examples (for reference)", report["seen_code"]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.4), dpi=110, squeeze=False)
    colors = {"grpo_mutant": "tab:red", "grpo_speed": "tab:green", "teacher": "tab:gray"}
    for ax, (title, results) in zip(axes[0], panels):
        points = {name: (res["runtime_s"] * 1e3, res["kill_rate"]) for name, res in results.items()
                  if res["runtime_s"] is not None}
        span = max([x for x, _ in points.values()], default=1.0) - min([x for x, _ in points.values()], default=0.0)
        placed = []
        for name, (x, y) in points.items():
            ax.scatter(x, y, s=60, zorder=3, color=colors.get(name, "tab:blue"))
            # labels of points that (nearly) coincide are stacked; others sit next to their point
            near = sum(abs(x - px) <= 0.06 * (span or 1.0) and abs(y - py) <= 0.05 for px, py in placed)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4 + 11 * near), fontsize=8)
            placed.append((x, y))
        for branch in ("grpo_mutant", "grpo_speed"):
            if "gkd" in points and branch in points:
                ax.annotate("", points[branch], points["gkd"],
                            arrowprops=dict(arrowstyle="->", color=colors[branch], lw=1.5))
        missing = [n for n, r in results.items() if r["runtime_s"] is None]
        if missing:
            ax.text(0.02, 0.02, "no passing tests: " + ", ".join(missing), transform=ax.transAxes, fontsize=7,
                    color="tab:gray")
        ax.set_xlabel("mean test runtime per file (ms; lower is better)")
        ax.set_ylabel("mean mutation kill rate (higher is better)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle("Kill rate vs test runtime: GKD -> GRPO-mutant / GRPO-speed")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def _markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [
        "# fastdistill demo report", "",
        "**Task:** a generated curriculum of function families (threshold above/below, add a constant, clamp, "
        "prefix check, list membership); a good test copies the function name and the constant from the prompt "
        "into boundary checks. Training reference tests are weak (one check that misses boundary mutants), strong "
        "(boundary checks) or loop (an exhaustive loop over 99,999 inputs against the code's own expression: kills "
        "like strong, several times slower; about as common as weak, so the students start out writing both). "
        f"Training instances: {report['n_train']} ({report.get('train_styles', {})}); held-out instances: "
        f"{report['n_held_out']}, with names (made-up words) and constants no training instance uses "
        f"({', '.join(report['held_out_names'])}). Wall time {report['wall_time_s']:.0f} s.", "",
        "The teacher is a tiny random model that first **learned the reference tests of the training split by SFT** "
        f"({cfg['teacher_steps']} steps); the tiny models cannot learn to write tests from scratch in minutes. "
        f"GRPO prompts: {len(report.get('grpo_prompt_names', []))} further instances drawn like the training ones "
        "(fresh words, training constants) that the SFT data never showed. "
        "Evaluation uses held-out instances only, greedy decoding.", "",
        "| model | kill rate | pass rate | test runtime (ms) | runtime CV | stable | tests/file | asserts/file "
        "| loops/file | max new tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in {**report["students"], "teacher": report["teacher"]}.items():
        lines.append(f"| {name} | {_fmt(r['kill_rate'])} | {_fmt(r['pass_rate'])} | "
                     f"{_fmt(r['runtime_s'], '.3f', 1e3)} | {_fmt(r['runtime_cv'], '.2f')} | "
                     f"{_fmt(r['stable_rate'], '.2f')} | {_fmt(r.get('tests_per_file'), '.2f')} | "
                     f"{_fmt(r.get('asserts_per_file'), '.2f')} | {_fmt(r.get('loops_per_file'), '.2f')} | "
                     f"{r['max_new_tokens']} |")
    if report.get("seen_code"):
        lines += ["", f"Same students on {len(report['seen_names'])} **training** examples they were trained on "
                  "(seen code; not the evaluation, shown to make what each stage learned visible):", "",
                  "| model (seen code) | kill rate | pass rate | test runtime (ms) | runtime CV | stable |",
                  "|---|---|---|---|---|---|"]
        for name, r in report["seen_code"].items():
            lines.append(f"| {name} | {_fmt(r['kill_rate'])} | {_fmt(r['pass_rate'])} | "
                         f"{_fmt(r['runtime_s'], '.3f', 1e3)} | {_fmt(r['runtime_cv'], '.2f')} | "
                         f"{_fmt(r['stable_rate'], '.2f')} |")
    acc = report["acceptance"]
    lines += ["", "Kill rate and pass rate are means over the held-out examples (per-example rows in report.json); "
              "runtime is the mean pytest time (setup+call+teardown) over the test files that pass, "
              f"{cfg['speed_repeats']} repeats each. tests/file and asserts/file describe the greedy completions "
              "(weak reference style: 1 test, 1 assert; strong: 1 test, 2 asserts; loop: 1 test, 1 assert in a loop), "
              "loops/file the share of completions with a loop; a "
              "failing file usually has a mis-copied name or constant. Seeds are fixed; the GRPO rewards include "
              "measured test runtimes, so GRPO updates (and the runtimes in this table) can differ slightly "
              "between runs.", "",
              "## What the branches show", "", f"- {acc['kill_rate_statement']}", f"- {acc['speed_statement']}", ""]
    held = {**report["students"], "teacher": report["teacher"]}
    if all(not r["pass_rate"] for r in held.values()):
        lines += ["No model (the teacher included) wrote a test file that passes on the unseen held-out code, so every "
                  "held-out kill rate is 0 and no held-out runtime exists: the tiny models learn the training tests, "
                  "including the training functions' names, and do not generalise to new functions at this size and "
                  "time budget. The seen-code table shows what each stage did learn.", ""]
    same = report.get("identical_to_sft", {})
    for where, n in (("held_out", report["n_held_out"]), ("seen_code", len(report.get("seen_names", [])))):
        if where in same:
            lines.append(f"Greedy completions identical to the SFT student's ({where.replace('_', ' ')}, of {n}): "
                         + ", ".join(f"{k} {v}" for k, v in same[where].items())
                         + ". Identical completions mean identical tests: runtime differences between them are "
                         "measurement noise, not learning.")
    lines.append("")
    if report.get("seen_code_comparison"):
        seen_cmp = report["seen_code_comparison"]
        lines += ["On the seen training code (not the acceptance measure): "
                  f"{seen_cmp['kill_rate_statement']} {seen_cmp['speed_statement']}", ""]
    lines += [
              "## Curation of the teacher's outputs", "",
              f"{report['curation']['rows_in']} teacher generations -> {report['curation']['rows_kept']} kept "
              f"(pass rate {_fmt(report['curation']['metrics'].get('tests_pass_rate'))}, mean kill rate "
              f"{_fmt(report['curation']['metrics'].get('mean_kill_rate'))}); see curation/ for the manifest, "
              "quality and timing reports.", "", "| step | rows in | rows out | time (s) |", "|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['rows_in']} | {s['rows_out']} | {s['time_s']:.2f} |"
              for s in report["curation"]["steps"]]
    lines += ["", "## Training", ""]
    for stage, info in report["training"].items():
        losses = info.get("losses") or info.get("rewards") or []
        what = "loss" if info.get("losses") else "reward"
        if losses and what == "reward":  # per-step rewards are noisy: means of the first and last tenth
            k = max(1, len(losses) // 10)
            lines.append(f"- {stage}: mean reward {_mean(losses[:k]):.3f} (first {k} steps) -> "
                         f"{_mean(losses[-k:]):.3f} (last {k}); {info['steps']} steps, {info['time_s']:.0f} s, "
                         f"temperature {info['temperature']}, max {info['max_completion_length']} tokens")
        elif losses:
            lines.append(f"- {stage}: {what} {losses[0]} -> {losses[-1]} "
                         f"({info['steps']} steps, {info['time_s']:.0f} s)")
    lines += ["", "## Stage times (s)", ""] + [f"- {k}: {v:.1f}" for k, v in report["timings_s"].items()]
    lines += ["", "![kill rate vs runtime](pareto.png)", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------

def run_demo(output_dir: str | os.PathLike, cfg: DemoConfig | None = None) -> dict:
    """Run the whole demo into ``output_dir`` and return the report (also written as report.json/.md)."""
    import torch

    from fastdistill import GKDConfig, GKDTrainer, SFTConfig, SFTTrainer
    from fastdistill.data import generate_tests_prompt
    from fastdistill.testing import tiny_causal_lm, tiny_tokenizer
    from fastdistill.trainers.utils import frozen_copy

    cfg = cfg or DemoConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def mark(stage, t0):
        timings[stage] = round(time.perf_counter() - t0, 2)
        logger.info("demo: %s done in %.1fs", stage, timings[stage])

    train, held_out, grpo_pool = family_examples(cfg.seed, cfg.n_train, cfg.n_held_out, n_extra=cfg.n_grpo)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    # tokenizer learned on the training split's code + tests with names and digits left out, plus the
    # syllables and the prompt wording: every syllable and every digit is one token, so a name or a
    # constant is copied token by token
    corpus = [re.sub(r"\d", "", (ex["code"] + ex["tests"]).replace(ex["name"].split("_")[1], "")) for ex in train]
    corpus += ["_".join(SYLLABLES)] * 20 + [generate_tests_prompt("x", system=False)[0]["content"]]
    tokenizer = tiny_tokenizer(corpus, vocab_size=cfg.vocab_size)
    shared = dict(tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024)

    # 1. teacher: learns the reference tests of the training split (+ renamed copies)
    t0 = time.perf_counter()
    teacher, _ = tiny_causal_lm(seed=cfg.seed + 1, tokenizer=tokenizer, **shared, **cfg.teacher)
    teacher_rows = _with_renames(train, cfg.renames, cfg.seed)
    teacher_trainer = SFTTrainer(model=teacher, train_dataset=_sft_dataset(teacher_rows), processing_class=tokenizer,
                                 args=SFTConfig(**_common_args(cfg, out, "teacher", cfg.teacher_steps, cfg.teacher_lr),
                                                max_length=cfg.max_length))
    teacher_trainer.train()
    teacher = teacher_trainer.model.eval()
    mark("teacher_sft", t0)
    training = {"teacher_sft": {"losses": _losses(teacher_trainer), "steps": cfg.teacher_steps,
                                "rows": len(teacher_rows), "time_s": timings["teacher_sft"]}}

    # 2. curation of the teacher's outputs on the training prompts
    t0 = time.perf_counter()
    kept, curation = _curate(teacher, tokenizer, train, cfg, out)
    mark("curation", t0)
    if not kept:
        logger.warning("curation kept no teacher output; the student learns from the reference tests instead")
        kept = [{"name": ex["name"], "code": ex["code"], "tests": ex["tests"]} for ex in train]
        curation["fallback"] = "no teacher output was kept; student SFT used the reference tests"

    # 3. student: base -> SFT -> GKD -> GRPO x2
    base, _ = tiny_causal_lm(seed=cfg.seed + 2, tokenizer=tokenizer, **shared, **cfg.student)
    students = {"base": copy.deepcopy(base)}
    student_rows = _with_renames(kept, cfg.renames, cfg.seed + 1)
    student_ds = _sft_dataset(student_rows)
    t0 = time.perf_counter()
    sft = SFTTrainer(model=base, train_dataset=student_ds, processing_class=tokenizer,
                     args=SFTConfig(**_common_args(cfg, out, "sft", cfg.sft_steps, cfg.lr), max_length=cfg.max_length))
    sft.train()
    students["sft"] = frozen_copy(sft.model)
    mark("student_sft", t0)
    training["student_sft"] = {"losses": _losses(sft), "steps": cfg.sft_steps, "rows": len(student_rows),
                               "time_s": timings["student_sft"]}

    t0 = time.perf_counter()
    gkd = GKDTrainer(model=sft.model, teacher_model=teacher, train_dataset=student_ds, processing_class=tokenizer,
                     args=GKDConfig(**_common_args(cfg, out, "gkd", cfg.gkd_steps, cfg.lr), max_length=cfg.max_length,
                                    lmbda=0.0, ce_lambda=0.5, jsd_lambda=1.0, beta=0.5))
    gkd.train()
    students["gkd"] = frozen_copy(gkd.model)
    mark("student_gkd", t0)
    training["student_gkd"] = {"losses": _losses(gkd), "steps": cfg.gkd_steps, "time_s": timings["student_gkd"]}

    # GRPO prompts: fresh instances of the training pool that the teacher and the SFT data never showed (on the
    # memorised training prompts the SFT student samples its memorised answer and GRPO has nothing to compare)
    grpo_train = [{"name": ex["name"], "code": ex["code"], "tests": ex["tests"]} for ex in grpo_pool]
    for branch in ("mutant", "speed"):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        model, info = _grpo(frozen_copy(students["gkd"]), tokenizer, grpo_train, cfg, out, branch)
        students[f"grpo_{branch}"] = model
        mark(f"grpo_{branch}", t0)
        training[f"grpo_{branch}"] = {**info, "steps": cfg.grpo_steps, "time_s": timings[f"grpo_{branch}"]}

    # 4. evaluation on held-out examples only: generate once, score twice
    t0 = time.perf_counter()
    eval_tokens = {"grpo_mutant": cfg.mutant_max_tokens, "grpo_speed": cfg.speed_max_tokens}
    results = {}
    for name in STUDENTS:
        results[name] = _evaluate(name, students[name], tokenizer, held_out, cfg, out,
                                  eval_tokens.get(name, cfg.eval_max_tokens))
    teacher_result = _evaluate("teacher", teacher, tokenizer, held_out, cfg, out, cfg.eval_max_tokens)
    mark("evaluation", t0)
    # secondary: a few TRAINING examples ("seen code"), reported apart, to show what the stages learned
    t0 = time.perf_counter()
    seen = train[: cfg.n_seen_eval]
    seen_results = {name: _evaluate(f"seen_{name}", students[name], tokenizer, seen, cfg, out,
                                    eval_tokens.get(name, cfg.eval_max_tokens))
                    for name in STUDENTS} if seen else {}
    mark("evaluation_seen", t0)

    report = {
        "config": asdict(cfg),
        "n_train": len(train), "n_held_out": len(held_out),
        "train_names": [ex["name"] for ex in train], "held_out_names": [ex["name"] for ex in held_out],
        "grpo_prompt_names": [ex["name"] for ex in grpo_pool],
        "task": "synthetic function-family curriculum (fastdistill.demo.FAMILIES); held-out names and constants "
                "are disjoint from training",
        "train_styles": {k: sum(ex["style"] == k for ex in train) for k in STYLES},
        "teacher_note": "the teacher learned the reference tests of the training split by SFT before distillation",
        "students": results, "teacher": teacher_result,
        "seen_names": [ex["name"] for ex in seen], "seen_code": seen_results,
        "curation": curation, "training": training,
        "acceptance": acceptance(results),
        "identical_to_sft": {where: {name: sum(a == b for a, b in zip(res[name]["completions"],
                                                                      res["sft"]["completions"]))
                                     for name in STUDENTS if name != "sft"}
                             for where, res in (("held_out", results), ("seen_code", seen_results)) if res},
        "seen_code_comparison": acceptance(seen_results, "seen-code") if seen_results else None,
        "timings_s": timings,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    torch.set_num_threads(old_threads)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _plot(report, out / "pareto.png")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    logger.info("demo: report written to %s", out)
    return report


def summary_table(report: dict) -> str:
    """The headline table printed at the end of ``fastdistill demo``."""
    lines = ["held-out code (the evaluation):",
             f"{'model':<12} {'kill rate':>9} {'pass rate':>9} {'runtime ms':>10} {'stable':>6} {'tests/file':>10} "
             f"{'asserts/file':>12} {'loops/file':>10}"]
    for name, r in {**report["students"], "teacher": report["teacher"]}.items():
        lines.append(f"{name:<12} {_fmt(r['kill_rate']):>9} {_fmt(r['pass_rate']):>9} "
                     f"{_fmt(r['runtime_s'], '.3f', 1e3):>10} {_fmt(r['stable_rate'], '.2f'):>6} "
                     f"{_fmt(r.get('tests_per_file'), '.2f'):>10} {_fmt(r.get('asserts_per_file'), '.2f'):>12} "
                     f"{_fmt(r.get('loops_per_file'), '.2f'):>10}")
    if report.get("seen_code"):
        lines += ["", f"seen training code ({len(report['seen_names'])} examples, for reference):"]
        for name, r in report["seen_code"].items():
            lines.append(f"{name:<12} {_fmt(r['kill_rate']):>9} {_fmt(r['pass_rate']):>9} "
                         f"{_fmt(r['runtime_s'], '.3f', 1e3):>10} {_fmt(r['stable_rate'], '.2f'):>6}")
    for where, counts in report.get("identical_to_sft", {}).items():
        lines.append(f"greedy completions identical to SFT's ({where.replace('_', ' ')}): "
                     + ", ".join(f"{k} {v}" for k, v in counts.items()))
    acc = report["acceptance"]
    lines += ["", acc["kill_rate_statement"], acc["speed_statement"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None, command: str = "demo") -> int:
    """Entry point of ``fastdistill demo``."""
    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="fastdistill-demo", help="where the report, plot and data go")
    parser.add_argument("--quick", action="store_true", help="reduced size (a minute or two; used by the tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is faster on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cfg = DemoConfig.quick() if args.quick else DemoConfig()
    cfg = replace(cfg, seed=args.seed)
    report = run_demo(args.output_dir, cfg)
    sys.stdout.write(summary_table(report) + f"\n\nwall time {report['wall_time_s']:.0f} s; report: "
                     f"{Path(args.output_dir) / 'report.md'}\n")
    return 0
