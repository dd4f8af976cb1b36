"""The demo's pipeline: teacher SFT -> curation -> student SFT -> GKD -> GRPO (two branches) -> evaluation."""

from __future__ import annotations

import copy
import gc
import json
import logging
import os
import random
import re
import time
from dataclasses import asdict
from pathlib import Path

from fastdistill.demo.config import DemoConfig
from fastdistill.demo.families import STYLES, SYLLABLES, _prompt, _sft_dataset, _with_renames, family_examples
from fastdistill.demo.report import STUDENTS, _fmt, _markdown, _mean, _plot, _test_shape, acceptance, environment

logger = logging.getLogger(__name__)


class DemoFailed(RuntimeError):
    """A stage of the demo produced nothing usable: the sandbox scored nothing, curation kept no row, or every
    kill rate in the report is 0.

    Raised by the stage that found it, with what it found; ``fastdistill demo`` turns it into a non-zero exit
    with this message, so a report that shows nothing never looks like a result. (Whether the two comparisons
    the demo is about hold is a result, reported in the report, not a failure.)
    """


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------


# model settings the demo's teacher and student share (their sizes are DemoConfig.teacher / .student)
MODEL_SHARED = dict(tie_word_embeddings=True, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=1024)


def demo_tokenizer(train: list[dict], vocab_size: int):
    """The demo's tokenizer, learned on the training split's code + tests with names and digits left out, plus
    the syllables and the prompt wording: every syllable and every digit is one token, so a name or a constant
    is copied token by token."""
    from fastdistill.data import generate_tests_prompt
    from fastdistill.testing import tiny_tokenizer

    corpus = [re.sub(r"\d", "", (ex["code"] + ex["tests"]).replace(ex["name"].split("_")[1], "")) for ex in train]
    corpus += ["_".join(SYLLABLES)] * 20 + [generate_tests_prompt("x", system=False)[0]["content"]]
    return tiny_tokenizer(corpus, vocab_size=vocab_size)


def _common_args(cfg: DemoConfig, out: Path, name: str, steps: int, lr: float) -> dict:
    return dict(
        output_dir=str(out / "checkpoints" / name),
        max_steps=steps,
        learning_rate=lr,
        bf16=False,
        per_device_train_batch_size=cfg.batch_size,
        logging_steps=max(1, steps // 10),
        report_to=[],
        save_strategy="no",
        seed=cfg.seed,
        lr_scheduler_type="cosine",
        warmup_steps=min(10, steps // 10),
        disable_tqdm=False,
        # TRL turns gradient checkpointing on by default; for models this small recomputing the forward in the
        # backward only costs time (the gradients are the same)
        gradient_checkpointing=False,
    )


def _losses(trainer) -> list[float]:
    return [round(float(h["loss"]), 4) for h in trainer.state.log_history if "loss" in h]


def _check_sandbox(held_out: list[dict], cfg: DemoConfig, n: int = 3) -> dict:
    """Mutation-score the reference tests of ``n`` held-out instances before any training.

    Those tests pass and kill every mutant, so a sandbox that cannot run them (pytest missing, workers that die
    at start) shows here, in seconds, as :class:`DemoFailed` instead of as kill rates of 0 after the training.
    """
    from fastdistill.evaluation import score_mutation

    rows = [{"name": ex["name"], "code": ex["code"], "completion": ex["tests"]} for ex in held_out[:n]]
    res = score_mutation(rows, max_mutants=cfg.max_mutants, n_workers=cfg.workers, progress=False)
    if not res["kill_rate"]:
        reasons = sorted({str(r.get("reason") or "") for r in res["rows"]} - {""})
        raise DemoFailed(
            f"the test sandbox scored nothing: the reference tests of {len(rows)} held-out functions, which pass and "
            f"kill every mutant, got pass rate {_fmt(res['pass_rate'])} and kill rate {_fmt(res['kill_rate'])} "
            f"({'; '.join(reasons[:3]) or 'no reason given'}). Is pytest installed in this environment "
            f"(`python -m pytest --version`)?"
        )
    return {"n": len(rows), "pass_rate": res["pass_rate"], "kill_rate": res["kill_rate"]}


def _curate(teacher, tokenizer, train: list[dict], cfg: DemoConfig, out: Path) -> tuple[list[dict], dict]:
    """Teacher generations on the training prompts -> curation steps -> kept rows + summary."""
    from datasets import Dataset

    from fastdistill.curation import (
        canonicalize,
        compute_hash,
        deduplicate,
        keep_by_score,
        quality_report,
        rule_filter,
        score_from_exec_eval,
        tests_exec_eval,
        timing_report,
        write_manifest,
    )
    from fastdistill.evaluation import generate
    from fastdistill.rewards.functions import extract_test_code

    cur_dir = out / "curation"
    t0 = time.perf_counter()
    gens = generate(
        teacher,
        [{"name": ex["name"], "code": ex["code"], "prompt": _prompt(ex["code"])} for ex in train],
        cur_dir / "teacher_generations.jsonl",
        tokenizer=tokenizer,
        max_new_tokens=cfg.eval_max_tokens,
        # batches of 64 (was 16): the trained teachers of seeds 0-2 wrote the same 360 completions either way,
        # in 3.3-3.8 s instead of 7.2-8.8 s
        batch_size=cfg.eval_batch_size,
        seed=cfg.seed,
    )
    steps = [
        {
            "name": "teacher_generate",
            "rows_in": len(train),
            "rows_out": len(gens),
            "time_s": time.perf_counter() - t0,
            "params": {"max_new_tokens": cfg.eval_max_tokens, "greedy": True},
        }
    ]
    input_ds = Dataset.from_list(
        [
            {"name": g["name"], "code": g["code"], "tests": extract_test_code(g["completion"]) or g["completion"]}
            for g in gens
        ]
    )
    ds = input_ds

    def step(name, fn, **params):
        nonlocal ds
        rows_in, t = len(ds), time.perf_counter()
        ds = fn(ds, **params)
        steps.append(
            {
                "name": name,
                "rows_in": rows_in,
                "rows_out": len(ds),
                "time_s": time.perf_counter() - t,
                "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str, bool, list))},
            }
        )

    step("canonicalize", canonicalize, columns="tests", whitespace="strip")
    step("compute_hash", compute_hash, columns=["code", "tests"])
    step("deduplicate", deduplicate, column="hash")
    step("rule_filter", rule_filter, column="tests", parses_as="python", min_len=20)
    step("tests_exec_eval", tests_exec_eval, max_mutants=cfg.max_mutants, seed=cfg.seed, num_proc=cfg.workers)
    evaluated = ds
    step("score_from_exec_eval", score_from_exec_eval)
    evaluated = ds
    step("keep_by_score", keep_by_score, min_score=0.5)
    write_manifest(
        cur_dir,
        input_ds=input_ds,
        output_ds=ds,
        steps=steps,
        input_source="teacher generations",
        config={"seed": cfg.seed, "max_mutants": cfg.max_mutants},
    )
    quality = quality_report(ds, steps=steps[1:], out_dir=cur_dir, evaluated_ds=evaluated)
    timing = timing_report(steps, out_dir=cur_dir)
    kept = [{"name": r["name"], "code": r["code"], "tests": r["tests"]} for r in ds]
    summary = {
        "rows_in": len(gens),
        "rows_kept": len(kept),
        "metrics": quality["metrics"],
        "steps": [
            {k: s[k] for k in ("name", "rows_in", "rows_out")} | {"time_s": round(s["time_s"], 3)} for s in steps
        ],
        "total_time_s": round(timing["total_time_s"], 2),
    }
    if not kept:
        metrics = quality["metrics"]
        per_step = ", ".join(f"{s['name']} {s['rows_out']}" for s in steps)
        raise DemoFailed(
            f"curation kept none of the {len(gens)} teacher outputs (tests pass rate "
            f"{_fmt(metrics.get('tests_pass_rate'))}, mean kill rate {_fmt(metrics.get('mean_kill_rate'))}; rows "
            f"after each step: {per_step}), so the student has nothing to learn from; the manifest and quality "
            f"report are in {cur_dir}"
        )
    return kept, summary


def _grpo(model, tokenizer, train: list[dict], cfg: DemoConfig, out: Path, branch: str):
    from datasets import Dataset

    from fastdistill import GRPOConfig, GRPOTrainer
    from fastdistill.rewards import composite_reward

    temperature = cfg.mutant_temperature if branch == "mutant" else cfg.speed_temperature
    max_tokens = cfg.mutant_max_tokens if branch == "mutant" else cfg.speed_max_tokens
    rows = _with_renames(
        [{"name": ex["name"], "code": ex["code"], "tests": ex["tests"]} for ex in train], cfg.renames, cfg.seed + 7
    )
    ds = Dataset.from_list([{"prompt": r["prompt"], "code": r["code"]} for r in rows]).shuffle(seed=cfg.seed)
    common = dict(max_mutants=cfg.max_mutants, n_workers=cfg.workers)
    if branch == "mutant" and cfg.grpo_mutant_weights:
        reward = composite_reward(dict(cfg.grpo_mutant_weights), **common)
    else:
        reward = composite_reward(preset=branch, **common)
    args = GRPOConfig(
        **{
            **_common_args(cfg, out, f"grpo_{branch}", cfg.grpo_steps, cfg.grpo_lr),
            "per_device_train_batch_size": cfg.grpo_generations * cfg.grpo_prompts_per_step,
            "logging_steps": 1,
            "warmup_steps": 0,
            "lr_scheduler_type": "constant",
        },
        num_generations=cfg.grpo_generations,
        max_completion_length=max_tokens,
        temperature=temperature,
        reward_preset=branch,
        beta=0.0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=ds, processing_class=tokenizer)
    trainer.train()
    history = trainer.state.log_history
    rewards = [round(float(h["reward"]), 4) for h in history if "reward" in h]
    # groups whose generations all got the same reward give GRPO no signal: the share of such groups per step
    zero_std = [round(float(h["frac_reward_zero_std"]), 4) for h in history if "frac_reward_zero_std" in h]
    return trainer.model, {
        "rewards": rewards,
        "frac_reward_zero_std": zero_std,
        "temperature": temperature,
        "max_completion_length": max_tokens,
        "preset": branch,
    }


def _evaluate(name, model, tokenizer, held_out, cfg, out, max_new_tokens, samples=None):
    """Greedy and ``samples`` sampled completions per instance, mutation-scored in one sandbox batch
    (:func:`_generate_for_eval`, then :func:`_score_for_eval`)."""
    samples = cfg.eval_samples if samples is None else samples
    gens, sampled = _generate_for_eval(name, model, tokenizer, held_out, cfg, out, max_new_tokens, samples)
    return _score_for_eval(gens, sampled, samples, cfg, max_new_tokens)


def _generate_for_eval(name, model, tokenizer, held_out, cfg, out, max_new_tokens, samples):
    """A model's greedy completion and ``samples`` sampled ones per instance (lists of generation rows)."""
    from fastdistill.evaluation import generate

    # the prompt the models were trained with (generate() would otherwise build one with a system message)
    rows = [{"name": ex["name"], "code": ex["code"], "prompt": _prompt(ex["code"])} for ex in held_out]
    common = dict(tokenizer=tokenizer, max_new_tokens=max_new_tokens, batch_size=cfg.eval_batch_size, progress=False)
    gens = generate(model, rows, out / "generations" / f"{name}.jsonl", seed=cfg.seed, **common)
    sampled = (
        generate(
            model,
            rows,
            out / "generations" / f"{name}.samples.jsonl",
            seed=cfg.seed + 1,
            temperature=cfg.eval_temperature,
            num_samples=samples,
            **common,
        )
        if samples
        else []
    )
    return gens, sampled


def _score_for_eval(gens, sampled, samples, cfg, max_new_tokens):
    """Mutation-score a model's evaluation completions in one sandbox batch.

    Headline ``kill_rate``/``pass_rate`` are the greedy means (rows in ``mutation_rows``), ``sampled``
    the means over the samples, and ``per_instance`` holds the per-instance values the paired
    comparisons resample. The runtimes (``speed_rows``, ``runtime_s``, ``per_instance["runtime_ms"]``)
    are added by :func:`_time_greedy_files`, for all models at once.
    """
    from fastdistill.rewards.functions import extract_test_code
    from fastdistill.rewards.mutation import score_batch

    everything = gens + sampled
    tests = [extract_test_code(g["completion"]) for g in everything]
    scored = [i for i, t in enumerate(tests) if t is not None]
    m_res, _ = score_batch([(everything[i]["code"], tests[i], cfg.max_mutants, None) for i in scored],
                           n_workers=cfg.workers)
    m_of = dict(zip(scored, m_res))
    m_rows = []
    for i, g in enumerate(everything):
        base = {
            "index": g.get("index"),
            "name": g["name"],
            "sample": g.get("sample", 0),
            "extracted": tests[i] is not None,
        }
        res = m_of.get(i)
        if res is None:
            m_rows.append(
                {
                    **base,
                    "passed": False,
                    "kill_rate": 0.0,
                    "killed": 0,
                    "total": 0,
                    "reason": "no test file in the completion",
                    "tests": tests[i],
                }
            )
        else:
            m_rows.append(
                {
                    **base,
                    "passed": bool(res.baseline_ok),
                    "kill_rate": float(res.kill_rate),
                    "killed": int(res.killed),
                    "total": int(res.total),
                    "reason": res.reason,
                    "tests": tests[i],
                }
            )
    greedy, sample_rows = m_rows[: len(gens)], m_rows[len(gens) :]
    shapes = [_test_shape(g["completion"]) for g in gens]  # each completion parsed once
    per_sample = {r["name"]: [] for r in greedy}
    for r in sample_rows:
        per_sample[r["name"]].append(r)
    per_instance = {
        "kill_greedy": [r["kill_rate"] for r in greedy],
        "kill_sampled": [_mean([s["kill_rate"] for s in per_sample[r["name"]]]) for r in greedy],
        "kill": [_mean([r["kill_rate"]] + [s["kill_rate"] for s in per_sample[r["name"]]]) for r in greedy],
        "pass": [_mean([float(r["passed"])] + [float(s["passed"]) for s in per_sample[r["name"]]]) for r in greedy],
    }
    return {
        "kill_rate": _mean([r["kill_rate"] for r in greedy]),
        "pass_rate": _mean([float(r["passed"]) for r in greedy]),
        "extract_rate": _mean([float(r["extracted"]) for r in greedy]),
        "n": len(greedy),
        "max_new_tokens": max_new_tokens,
        "sampled": {
            "k": samples,
            "temperature": cfg.eval_temperature if samples else None,
            "kill_rate": _mean([r["kill_rate"] for r in sample_rows]),
            "pass_rate": _mean([float(r["passed"]) for r in sample_rows]),
            "n": len(sample_rows),
        },
        "kill_rate_all": _mean(per_instance["kill"]),
        "tests_per_file": _mean([tests for tests, _, _ in shapes]),
        "asserts_per_file": _mean([asserts for _, asserts, _ in shapes]),
        "loops_per_file": _mean([float(loops > 0) for _, _, loops in shapes]),
        "completions": [g["completion"] for g in gens],
        "mutation_rows": greedy,
        "sample_rows": sample_rows,
        "per_instance": per_instance,
    }


def _evaluate_models(plan: dict, tokenizer, held_out, cfg: DemoConfig, out: Path) -> dict[str, dict]:
    """:func:`_evaluate` for every model of ``plan`` (name -> (model, max_new_tokens, samples)), pipelined: while the
    sandbox scores one model's completions (in a background thread; its workers are processes), the next model
    generates. Returns the results in ``plan``'s order.

    Generation runs on ``cfg.eval_threads`` torch threads: a second thread did not make the demo's small models
    generate any faster (1.40 s and 5.8 s per model either way, on 2 cores), so the other core goes to the sandbox.
    The teacher (greedy only: quick to generate, nothing to overlap with yet) goes first and the base model
    (greedy only, and it writes few test files: little to score after the last generation) last.
    """
    import torch
    from concurrent.futures import ThreadPoolExecutor

    order = sorted(plan, key=lambda name: {"teacher": 0, "base": 2}.get(name, 1))
    futures = {}
    old_threads = torch.get_num_threads()
    if cfg.eval_threads:
        torch.set_num_threads(cfg.eval_threads)
    # one scoring thread: batches are scored one after another, in generation order
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastdistill-demo-scoring") as scoring:
        try:
            for name in order:
                model, max_new_tokens, samples = plan[name]
                gens, sampled = _generate_for_eval(name, model, tokenizer, held_out, cfg, out, max_new_tokens, samples)
                for done in futures.values():  # a scoring batch that failed stops the evaluation now
                    if done.done() and done.exception() is not None:
                        raise done.exception()
                futures[name] = scoring.submit(_score_for_eval, gens, sampled, samples, cfg, max_new_tokens)
        except BaseException:
            scoring.shutdown(cancel_futures=True)  # batches not started yet are dropped
            raise
        finally:
            torch.set_num_threads(old_threads)
        return {name: futures[name].result() for name in plan}


def _time_greedy_files(results: dict[str, dict], instances: list[dict], cfg: DemoConfig) -> None:
    """Run every model's greedy test files ``cfg.speed_repeats`` times, in one sandbox batch, and add the runtimes.

    The runtime comparison is paired by instance, so the batch is too: the files of instance 1 of every model,
    then those of instance 2, and so on, so a machine that speeds up or slows down during the batch moves every
    model's runtimes alike (timed model by model, identical files written by two GRPO students differed by
    0.14-0.17 ms on average, in either direction: more than the effect being measured). A file several models
    wrote (same code, same tests) is timed once and that time is given to each of them.

    A greedy file is the ``tests`` of a result's ``mutation_rows[i]`` on the code of ``instances[i]``; only files
    whose tests passed in the mutation run are timed (a failing file has no runtime either way). Fills
    ``speed_rows``, ``runtime_s``, ``runtime_cv``, ``stable_rate``, ``n_timed`` and ``per_instance["runtime_ms"]``
    (the greedy file's runtime when it passes, else None) of each result.
    """
    from fastdistill.evaluation.metrics import speed_fields
    from fastdistill.rewards.mutation import score_batch

    files = {name: [(ex["code"], r["tests"]) for ex, r in zip(instances, res["mutation_rows"], strict=True)]
             for name, res in results.items()}
    order: dict[tuple[str, str], int] = {}  # distinct (code, tests) -> request index, in instance-major order
    for i in range(len(instances)):
        for name, res in results.items():
            # a file whose tests failed on the code in the mutation run gets no runtime: not timed (this saved
            # about a quarter of the timing, failing tests being the slow ones to report)
            if files[name][i][1] is not None and res["mutation_rows"][i]["passed"]:
                order.setdefault(files[name][i], len(order))
    _, runs = score_batch([], [(code, tests, cfg.speed_repeats) for code, tests in order], n_workers=cfg.workers)

    def fields(key):
        if key in order:
            return speed_fields(runs[order[key]], cfg.speed_repeats)
        out = speed_fields(None, cfg.speed_repeats)
        if key[1] is not None:
            out["reason"] = "the tests failed on the code when mutation-scored: not timed"
        return out

    for name, res in results.items():
        s_rows = [{k: r[k] for k in ("index", "name", "sample", "extracted")} | fields(key)
                  for r, key in zip(res["mutation_rows"], files[name])]
        ok_timed = [r for r in s_rows if r["ran"] and r["passed"]]
        res.update(speed_rows=s_rows, runtime_s=_mean([r["runtime_s"] for r in ok_timed]),
                   runtime_cv=_mean([r["cv"] for r in ok_timed]),
                   stable_rate=_mean([float(r["passed"] and not r["flaky"]) for r in s_rows]), n_timed=len(ok_timed))
        res["per_instance"]["runtime_ms"] = [r["runtime_s"] * 1e3 if r["ran"] and r["passed"] else None for r in s_rows]


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def run_demo(output_dir: str | os.PathLike, cfg: DemoConfig | None = None) -> dict:
    """Run the whole demo into ``output_dir`` and return the report (also written as report.json/.md).

    Torch uses ``cfg.threads`` CPU threads during the run (torch's own choice when it is 0 or None)
    and, with ``cfg.deterministic``, deterministic algorithms where it offers them; the previous
    settings are restored afterwards, also when a stage fails. The same seed on the same machine and
    versions gives the same models; across machines floating-point results differ, so the report's
    claims are paired bootstrap intervals, not bit-exact numbers.
    """
    import torch

    cfg = cfg or DemoConfig()
    old_threads = torch.get_num_threads()
    old_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    old_fill = torch.utils.deterministic.fill_uninitialized_memory
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:  # deterministic kernels where torch has them; warn (not fail) where it has none
        torch.use_deterministic_algorithms(True, warn_only=True)
        # deterministic mode also fills every torch.empty with NaN, a debugging aid that made the demo's
        # training ~2.5x slower on CPU (teacher SFT 1.1 vs 2.6 it/s); results do not depend on it
        torch.utils.deterministic.fill_uninitialized_memory = False
    # The objects the imports leave (~540k: torch, transformers, TRL) go to the collector's permanent
    # generation for the run, so its full passes skip them: 13 in the quick demo, 0.35 s each before. Left alone
    # when the caller froze objects itself; undone afterwards.
    from fastdistill import GKDTrainer, GRPOTrainer, SFTTrainer  # noqa: F401 - imported to be frozen

    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.collect()
        gc.freeze()
    try:
        return _run_demo(Path(output_dir), cfg)
    finally:
        if freeze:
            gc.unfreeze()
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det[0], warn_only=old_det[1])
        torch.utils.deterministic.fill_uninitialized_memory = old_fill


def _run_demo(out: Path, cfg: DemoConfig) -> dict:
    import torch

    from fastdistill import GKDConfig, GKDTrainer, SFTConfig, SFTTrainer
    from fastdistill.testing import tiny_causal_lm
    from fastdistill.trainers.utils import frozen_copy

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}

    def mark(stage, t0):
        timings[stage] = round(time.perf_counter() - t0, 2)
        logger.info("demo: %s done in %.1fs", stage, timings[stage])

    train, held_out, grpo_pool = family_examples(cfg.seed, cfg.n_train, cfg.n_held_out, styles=cfg.styles,
                                               n_extra=cfg.n_grpo)
    from transformers import set_seed

    set_seed(cfg.seed)  # python, numpy and torch generators
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # 0. the sandbox scores the reference tests (fails in seconds when it cannot run tests)
    t0 = time.perf_counter()
    sandbox = _check_sandbox(held_out, cfg)
    mark("sandbox_check", t0)

    tokenizer = demo_tokenizer(train, cfg.vocab_size)

    # 1. teacher: learns the reference tests of the training split (+ renamed copies)
    t0 = time.perf_counter()
    teacher, _ = tiny_causal_lm(seed=cfg.seed + 1, tokenizer=tokenizer, **MODEL_SHARED, **cfg.teacher)
    teacher_rows = _with_renames(train, cfg.renames, cfg.seed)
    teacher_trainer = SFTTrainer(
        model=teacher,
        train_dataset=_sft_dataset(teacher_rows),
        processing_class=tokenizer,
        args=SFTConfig(
            **_common_args(cfg, out, "teacher", cfg.teacher_steps, cfg.teacher_lr), max_length=cfg.max_length
        ),
    )
    teacher_trainer.train()
    teacher = teacher_trainer.model.eval()
    mark("teacher_sft", t0)
    training = {
        "teacher_sft": {
            "losses": _losses(teacher_trainer),
            "steps": cfg.teacher_steps,
            "rows": len(teacher_rows),
            "time_s": timings["teacher_sft"],
        }
    }

    # 2. curation of the teacher's outputs on the training prompts
    t0 = time.perf_counter()
    kept, curation = _curate(teacher, tokenizer, train, cfg, out)
    mark("curation", t0)

    # 3. student: base -> SFT -> GKD -> GRPO x2
    base, _ = tiny_causal_lm(seed=cfg.seed + 2, tokenizer=tokenizer, **MODEL_SHARED, **cfg.student)
    students = {"base": copy.deepcopy(base)}
    student_rows = _with_renames(kept, cfg.renames, cfg.seed + 1)
    student_ds = _sft_dataset(student_rows)
    t0 = time.perf_counter()
    sft = SFTTrainer(
        model=base,
        train_dataset=student_ds,
        processing_class=tokenizer,
        args=SFTConfig(**_common_args(cfg, out, "sft", cfg.sft_steps, cfg.lr), max_length=cfg.max_length),
    )
    sft.train()
    students["sft"] = frozen_copy(sft.model)
    mark("student_sft", t0)
    training["student_sft"] = {
        "losses": _losses(sft),
        "steps": cfg.sft_steps,
        "rows": len(student_rows),
        "time_s": timings["student_sft"],
    }

    t0 = time.perf_counter()
    gkd = GKDTrainer(
        model=sft.model,
        teacher_model=teacher,
        train_dataset=student_ds,
        processing_class=tokenizer,
        args=GKDConfig(
            **_common_args(cfg, out, "gkd", cfg.gkd_steps, cfg.gkd_lr or cfg.lr),
            max_length=cfg.max_length,
            lmbda=0.0,
            ce_lambda=0.5,
            jsd_lambda=1.0,
            beta=0.5,
        ),
    )
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
    # the base model and the teacher are references, not compared: greedy only
    plan = {name: (students[name], eval_tokens.get(name, cfg.eval_max_tokens),
                   0 if name == "base" else cfg.eval_samples) for name in STUDENTS}
    plan["teacher"] = (teacher, cfg.eval_max_tokens, 0)
    results = _evaluate_models(plan, tokenizer, held_out, cfg, out)
    _time_greedy_files(results, held_out, cfg)
    teacher_result = results.pop("teacher")
    mark("evaluation", t0)
    # secondary: a few TRAINING examples ("seen code"), reported apart, to show what the stages learned
    t0 = time.perf_counter()
    seen = train[: cfg.n_seen_eval]
    seen_results = (
        {
            name: _evaluate(
                f"seen_{name}",
                students[name],
                tokenizer,
                seen,
                cfg,
                out,
                eval_tokens.get(name, cfg.eval_max_tokens),
                samples=0,
            )
            for name in STUDENTS
        }
        if seen
        else {}
    )
    if seen_results:
        _time_greedy_files(seen_results, seen, cfg)
    mark("evaluation_seen", t0)

    report = {
        "config": asdict(cfg),
        "n_train": len(train),
        "n_held_out": len(held_out),
        "train_names": [ex["name"] for ex in train],
        "held_out_names": [ex["name"] for ex in held_out],
        "grpo_prompt_names": [ex["name"] for ex in grpo_pool],
        "task": "synthetic function-family curriculum (fastdistill.demo.FAMILIES); held-out names and constants "
        "are disjoint from training",
        "train_styles": {k: sum(ex["style"] == k for ex in train) for k in (cfg.styles or STYLES)},
        "teacher_note": "the teacher learned the reference tests of the training split by SFT before distillation",
        "students": results,
        "teacher": teacher_result,
        "seen_names": [ex["name"] for ex in seen],
        "seen_code": seen_results,
        "sandbox_check": sandbox,
        "curation": curation,
        "training": training,
        "environment": environment(cfg),
        "acceptance": acceptance(results, "held-out", cfg),
        "identical_to_sft": {
            where: {
                name: sum(a == b for a, b in zip(res[name]["completions"], res["sft"]["completions"]))
                for name in STUDENTS
                if name != "sft"
            }
            for where, res in (("held_out", results), ("seen_code", seen_results))
            if res
        },
        "seen_code_comparison": acceptance(seen_results, "seen-code", cfg) if seen_results else None,
        "timings_s": timings,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    _plot(report, out / "pareto.png")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    logger.info("demo: report written to %s", out)
    check_kill_rates(report, out)
    return report


def check_kill_rates(report: dict, out: str | os.PathLike = "the output directory") -> None:
    """Raise :class:`DemoFailed` when every kill rate in ``report`` is 0 or missing: a report that shows nothing.

    The kill rates are those of the held-out evaluation (students and teacher), of the seen-code evaluation and
    of the curated teacher outputs. Called once the report is written, so it can still be read.
    """
    held = {**report["students"], "teacher": report["teacher"]}
    rates = {f"{name} (held-out)": r["kill_rate"] for name, r in held.items()}
    rates |= {f"{name} (seen code)": r["kill_rate"] for name, r in (report.get("seen_code") or {}).items()}
    rates["teacher outputs in curation"] = report["curation"]["metrics"].get("mean_kill_rate")
    if not any(rates.values()):
        raise DemoFailed(
            f"every kill rate in the report is 0 or missing ({len(rates)} measured: {', '.join(rates)}): no test "
            f"file any model wrote killed a single mutant, so the report in {out} shows nothing"
        )
