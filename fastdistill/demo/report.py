"""The demo's report: the shape of generated tests, the two comparisons, report.md, the plot and the summary table."""

from __future__ import annotations

from pathlib import Path

STUDENTS = ("base", "sft", "gkd", "grpo_mutant", "grpo_speed")


def _test_shape(completion: str) -> tuple[int, int, int]:
    """(test functions, assert statements, loops) of the pytest file in a completion; zeros if there is none."""
    import ast

    from fastdistill.rewards.functions import extract_test_code

    tests = extract_test_code(completion)
    if tests is None:
        return 0, 0, 0
    nodes = list(ast.walk(ast.parse(tests)))
    return (
        sum(isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in nodes),
        sum(isinstance(n, ast.Assert) for n in nodes),
        sum(isinstance(n, (ast.For, ast.While, ast.comprehension)) for n in nodes),
    )


def shape_of_tests(completion: str) -> tuple[int, int]:
    """(test functions, assert statements) of the pytest file in a completion; (0, 0) if there is none."""
    return _test_shape(completion)[:2]


def _mean(values):
    return sum(values) / len(values) if values else None


def _fmt(v, spec=".3f", scale=1.0):
    return "n/a" if v is None else format(v * scale, spec)


# the demo's headline comparisons: (key, model a, model b, per-instance metric, what is compared, words for b - a > 0
# and < 0, scale and unit of the difference). Each is the paired mean of b - a over instances with a bootstrap interval.
COMPARISONS = (
    (
        "grpo_mutant_vs_sft_kill",
        "sft",
        "grpo_mutant",
        "kill",
        "GRPO-mutant vs SFT kill rate",
        ("higher", "lower"),
        "+.3f",
        "",
    ),
    (
        "grpo_speed_vs_grpo_mutant_runtime",
        "grpo_mutant",
        "grpo_speed",
        "runtime_ms",
        "GRPO-speed vs GRPO-mutant test runtime",
        ("slower", "faster"),
        "+.2f",
        " ms",
    ),
    ("gkd_vs_sft_kill", "sft", "gkd", "kill", "GKD vs SFT kill rate", ("higher", "lower"), "+.3f", ""),
)


def comparisons(students: dict, cfg=None, strata=None, where: str = "held-out") -> dict:
    """The headline comparisons as paired bootstrap intervals over instances.

    ``students`` maps model names to results with a ``per_instance`` dict (see the demo's evaluation):
    ``kill`` is each instance's kill rate averaged over its greedy and sampled completions,
    ``runtime_ms`` the mean runtime of its greedy test file when that file passes (None otherwise;
    the runtime comparison uses the instances where both models' files pass). ``strata`` (one label
    per instance, e.g. the seed) makes the resampling stratified, for results pooled over runs.
    """
    from fastdistill.evaluation.stats import describe_comparison, paired_bootstrap

    resamples = getattr(cfg, "bootstrap_resamples", 10_000)
    seed = getattr(cfg, "seed", 0)
    k = students.get("grpo_mutant", {}).get("sampled", {}).get("k") or 0
    basis = {
        "kill": (
            f"per instance: mean over the greedy completion and {k} samples at temperature "
            f"{students['grpo_mutant']['sampled']['temperature']}"
        )
        if k
        else "per instance: greedy completion",
        "runtime_ms": "greedy test files that pass for both models",
    }
    out = {}
    for key, a, b, metric, label, words, spec, unit in COMPARISONS:
        if a not in students or b not in students:
            continue
        pa, pb = students[a]["per_instance"], students[b]["per_instance"]
        res = paired_bootstrap(pa[metric], pb[metric], strata=strata, n_resamples=resamples, seed=seed)
        text = describe_comparison(res, spec=spec, unit=unit, words=words)
        mean_spec = spec.lstrip("+")
        means = (
            ""
            if res["diff"] is None
            else f"; means {format(res['b_mean'], mean_spec)}{unit} vs {format(res['a_mean'], mean_spec)}{unit}"
        )
        entry = {
            "a": a,
            "b": b,
            "metric": metric,
            "basis": basis[metric],
            **res,
            "statement": f"{label} ({where}, {basis[metric]}): {text}{means}.",
        }
        if metric == "kill" and k:  # the greedy-only interval, for reference
            entry["greedy"] = paired_bootstrap(
                pa["kill_greedy"], pb["kill_greedy"], strata=strata, n_resamples=resamples, seed=seed
            )
            entry["greedy"]["statement"] = describe_comparison(entry["greedy"], spec=spec, words=words)
        out[key] = entry
    return out


def acceptance(students: dict, where: str = "held-out", cfg=None, strata=None) -> dict:
    """The demo's claims, each decided by its 95% interval (not by a point estimate).

    ``grpo_mutant_kill_rate_above_sft``: the interval of GRPO-mutant minus SFT kill rate is above 0;
    ``grpo_speed_faster_than_mutant``: the runtime difference interval is below 0;
    ``gkd_not_below_sft``: the GKD minus SFT interval is not entirely below 0.
    """
    comps = comparisons(students, cfg, strata=strata, where=where)
    kill, speed, gkd = (
        comps.get(k, {}) for k in ("grpo_mutant_vs_sft_kill", "grpo_speed_vs_grpo_mutant_runtime", "gkd_vs_sft_kill")
    )
    return {
        "grpo_mutant_kill_rate_above_sft": bool(kill.get("low") is not None and kill["low"] > 0),
        "kill_rate_statement": kill.get("statement", "GRPO-mutant vs SFT: not evaluated."),
        "grpo_speed_faster_than_mutant": bool(speed.get("high") is not None and speed["high"] < 0),
        "speed_statement": speed.get("statement", "GRPO-speed vs GRPO-mutant: not evaluated."),
        "gkd_not_below_sft": bool(gkd.get("high") is not None and gkd["high"] >= 0),
        "gkd_statement": gkd.get("statement", "GKD vs SFT: not evaluated."),
        "comparisons": comps,
    }


def environment(cfg=None) -> dict:
    """Machine, versions, threads, determinism and seed of the run (printed with the summary)."""
    import importlib.metadata
    import os
    import platform

    import torch

    versions = {}
    for pkg in ("torch", "transformers", "trl", "datasets", "numpy"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "machine": platform.machine(),
        "cpu": cpu or None,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "seed": getattr(cfg, "seed", None),
    }


def environment_line(env: dict) -> str:
    """One line of :func:`environment`: machine, versions, threads and seed."""
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    return (
        f"machine: {env['machine']} ({env['cpu']}, {env['cpus']} CPUs), python {env['python']}, {versions}; "
        f"torch threads {env['torch_threads']}, deterministic algorithms {env['deterministic_algorithms']}; "
        f"seed {env['seed']}"
    )


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
        points = {
            name: (res["runtime_s"] * 1e3, res["kill_rate"])
            for name, res in results.items()
            if res["runtime_s"] is not None
        }
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
                ax.annotate(
                    "", points[branch], points["gkd"], arrowprops=dict(arrowstyle="->", color=colors[branch], lw=1.5)
                )
        missing = [n for n, r in results.items() if r["runtime_s"] is None]
        if missing:
            ax.text(
                0.02,
                0.02,
                "no passing tests: " + ", ".join(missing),
                transform=ax.transAxes,
                fontsize=7,
                color="tab:gray",
            )
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
        "# fastdistill demo report",
        "",
        "**Task:** a generated curriculum of function families (threshold above/below, add a constant, clamp, "
        "prefix check, list membership); a good test copies the function name and the constant from the prompt "
        "into boundary checks. Training reference tests are weak (one check that misses boundary mutants), strong "
        "(boundary checks) or loop (one assert over 9,999 inputs of a check that holds for every constant of the "
        "family: needs no constant, kills more than weak for clamp, membership and prefix, a few ms slower; about as "
        "common as weak, so the students start out writing both). "
        f"Training instances: {report['n_train']} ({report.get('train_styles', {})}); held-out instances: "
        f"{report['n_held_out']}, with names (made-up words) and constants no training instance uses "
        f"({', '.join(report['held_out_names'])}). Wall time {report['wall_time_s']:.0f} s.",
        "",
        "The teacher is a tiny random model that first **learned the reference tests of the training split by SFT** "
        f"({cfg['teacher_steps']} steps); the tiny models cannot learn to write tests from scratch in minutes. "
        f"GRPO prompts: {len(report.get('grpo_prompt_names', []))} further instances drawn like the training ones "
        "(fresh words, training constants) that the SFT data never showed. "
        f"Evaluation uses held-out instances only: each is scored with its greedy completion and, for the compared "
        f"students, {cfg.get('eval_samples', 0)} samples at temperature {cfg.get('eval_temperature')}; comparisons are "
        "paired over instances with 95% bootstrap intervals.",
        "",
        "| model | kill rate (greedy) | kill rate (samples) | pass rate | test runtime (ms) | runtime CV | stable "
        "| tests/file | asserts/file | loops/file | max new tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in {**report["students"], "teacher": report["teacher"]}.items():
        lines.append(
            f"| {name} | {_fmt(r['kill_rate'])} | {_fmt(r.get('sampled', {}).get('kill_rate'))} | "
            f"{_fmt(r['pass_rate'])} | "
            f"{_fmt(r['runtime_s'], '.3f', 1e3)} | {_fmt(r['runtime_cv'], '.2f')} | "
            f"{_fmt(r['stable_rate'], '.2f')} | {_fmt(r.get('tests_per_file'), '.2f')} | "
            f"{_fmt(r.get('asserts_per_file'), '.2f')} | {_fmt(r.get('loops_per_file'), '.2f')} | "
            f"{r['max_new_tokens']} |"
        )
    if report.get("seen_code"):
        lines += [
            "",
            f"Same students on {len(report['seen_names'])} **training** examples they were trained on "
            "(seen code; not the evaluation, shown to make what each stage learned visible):",
            "",
            "| model (seen code) | kill rate | pass rate | test runtime (ms) | runtime CV | stable |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in report["seen_code"].items():
            lines.append(
                f"| {name} | {_fmt(r['kill_rate'])} | {_fmt(r['pass_rate'])} | "
                f"{_fmt(r['runtime_s'], '.3f', 1e3)} | {_fmt(r['runtime_cv'], '.2f')} | "
                f"{_fmt(r['stable_rate'], '.2f')} |"
            )
    acc = report["acceptance"]
    lines += [
        "",
        "Kill rate and pass rate are means over the held-out examples (per-example rows in report.json); "
        "runtime is the mean pytest time (setup+call+teardown) over the test files that pass, "
        f"{cfg['speed_repeats']} repeats each. tests/file and asserts/file describe the greedy completions "
        "(weak reference style: 1 test, 1 assert; strong: 1 test, 2 asserts; loop: 1 test, 1 assert in a loop), "
        "loops/file the share of completions with a loop; a "
        "failing file usually has a mis-copied name or constant. Seeds, threads and (where torch has them) "
        "deterministic algorithms are fixed, so a rerun on the same machine and versions repeats the models; "
        "another machine's floating-point results differ, the models part ways during training, and the "
        "numbers move: the claims below are paired bootstrap intervals over the held-out instances, stated "
        "as higher/lower only when the 95% interval excludes 0. The GRPO rewards include measured test "
        "runtimes, so GRPO updates can differ between runs even on one machine.",
        "",
        "## What the branches show (paired, 95% bootstrap intervals over instances)",
        "",
        f"- {acc['kill_rate_statement']}",
        f"- {acc['speed_statement']}",
    ]
    if acc.get("gkd_statement"):
        lines.append(f"- {acc['gkd_statement']}")
    if report.get("environment"):
        lines += ["", f"Run environment: {environment_line(report['environment'])}."]
    lines.append("")
    held = {**report["students"], "teacher": report["teacher"]}
    if all(not r["pass_rate"] for r in held.values()):
        lines += [
            "No model (the teacher included) wrote a test file that passes on the unseen held-out code, so every "
            "held-out kill rate is 0 and no held-out runtime exists: the tiny models learn the training tests, "
            "including the training functions' names, and do not generalise to new functions at this size and "
            "time budget. The seen-code table shows what each stage did learn.",
            "",
        ]
    same = report.get("identical_to_sft", {})
    for where, n in (("held_out", report["n_held_out"]), ("seen_code", len(report.get("seen_names", [])))):
        if where in same:
            lines.append(
                f"Greedy completions identical to the SFT student's ({where.replace('_', ' ')}, of {n}): "
                + ", ".join(f"{k} {v}" for k, v in same[where].items())
                + ". Identical completions mean identical tests: runtime differences between them are "
                "measurement noise, not learning."
            )
    lines.append("")
    if report.get("seen_code_comparison"):
        seen_cmp = report["seen_code_comparison"]
        lines += [
            "On the seen training code (not the acceptance measure): "
            f"{seen_cmp['kill_rate_statement']} {seen_cmp['speed_statement']}",
            "",
        ]
    lines += [
        "## Curation of the teacher's outputs",
        "",
        f"{report['curation']['rows_in']} teacher generations -> {report['curation']['rows_kept']} kept "
        f"(pass rate {_fmt(report['curation']['metrics'].get('tests_pass_rate'))}, mean kill rate "
        f"{_fmt(report['curation']['metrics'].get('mean_kill_rate'))}); see curation/ for the manifest, "
        "quality and timing reports.",
        "",
        "| step | rows in | rows out | time (s) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['name']} | {s['rows_in']} | {s['rows_out']} | {s['time_s']:.2f} |" for s in report["curation"]["steps"]
    ]
    lines += ["", "## Training", ""]
    for stage, info in report["training"].items():
        losses = info.get("losses") or info.get("rewards") or []
        what = "loss" if info.get("losses") else "reward"
        if losses and what == "reward":  # per-step rewards are noisy: means of the first and last tenth
            k = max(1, len(losses) // 10)
            zero = info.get("frac_reward_zero_std") or []
            lines.append(
                f"- {stage}: mean reward {_mean(losses[:k]):.3f} (first {k} steps) -> "
                f"{_mean(losses[-k:]):.3f} (last {k}); {info['steps']} steps, {info['time_s']:.0f} s, "
                f"temperature {info['temperature']}, max {info['max_completion_length']} tokens"
                + (
                    f"; prompt groups with no reward spread (no GRPO signal): {_mean(zero):.2f} on average"
                    if zero
                    else ""
                )
            )
        elif losses:
            lines.append(
                f"- {stage}: {what} {losses[0]} -> {losses[-1]} ({info['steps']} steps, {info['time_s']:.0f} s)"
            )
    lines += ["", "## Stage times (s)", ""] + [f"- {k}: {v:.1f}" for k, v in report["timings_s"].items()]
    lines += ["", "![kill rate vs runtime](pareto.png)", ""]
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    """The headline table printed at the end of ``fastdistill demo``."""
    lines = [
        f"held-out code (the evaluation, {report['n_held_out']} instances; kill rate of the greedy completions "
        "and of the samples):",
        f"{'model':<12} {'kill rate':>9} {'sampled':>7} {'pass rate':>9} {'runtime ms':>10} {'stable':>6} "
        f"{'tests/file':>10} {'asserts/file':>12} {'loops/file':>10}",
    ]
    for name, r in {**report["students"], "teacher": report["teacher"]}.items():
        lines.append(
            f"{name:<12} {_fmt(r['kill_rate']):>9} {_fmt(r.get('sampled', {}).get('kill_rate')):>7} "
            f"{_fmt(r['pass_rate']):>9} "
            f"{_fmt(r['runtime_s'], '.3f', 1e3):>10} {_fmt(r['stable_rate'], '.2f'):>6} "
            f"{_fmt(r.get('tests_per_file'), '.2f'):>10} {_fmt(r.get('asserts_per_file'), '.2f'):>12} "
            f"{_fmt(r.get('loops_per_file'), '.2f'):>10}"
        )
    if report.get("seen_code"):
        lines += ["", f"seen training code ({len(report['seen_names'])} examples, for reference):"]
        for name, r in report["seen_code"].items():
            lines.append(
                f"{name:<12} {_fmt(r['kill_rate']):>9} {_fmt(r['pass_rate']):>9} "
                f"{_fmt(r['runtime_s'], '.3f', 1e3):>10} {_fmt(r['stable_rate'], '.2f'):>6}"
            )
    for where, counts in report.get("identical_to_sft", {}).items():
        lines.append(
            f"greedy completions identical to SFT's ({where.replace('_', ' ')}): "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
        )
    cur = report["curation"]
    lines.append(
        f"curation kept {cur['rows_kept']} of {cur['rows_in']} teacher outputs on the training code "
        f"(pass rate {_fmt(cur['metrics'].get('tests_pass_rate'))}, "
        f"mean kill rate {_fmt(cur['metrics'].get('mean_kill_rate'))})"
    )
    acc = report["acceptance"]
    lines += [
        "",
        "comparisons (paired over held-out instances, 95% bootstrap intervals):",
        acc["kill_rate_statement"],
        acc["speed_statement"],
    ]
    if acc.get("gkd_statement"):
        lines.append(acc["gkd_statement"])
    if report.get("environment"):
        lines += ["", environment_line(report["environment"])]
    return "\n".join(lines)
