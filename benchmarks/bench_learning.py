"""Is the demo's learning effect real? The whole demo pipeline over several seeds, with paired intervals.

    python benchmarks/bench_learning.py [--seeds 0,1,2] [--quick] [--jobs 1] [--output-dir DIR] [--set FIELD=VALUE]

Each seed runs ``fastdistill demo`` end to end (teacher SFT -> curation -> student SFT -> GKD ->
GRPO-mutant / GRPO-speed -> evaluation on held-out instances, greedy + sampled completions). Per
seed the three comparisons of the demo (GRPO-mutant vs SFT kill rate, GRPO-speed vs GRPO-mutant
test runtime, GKD vs SFT kill rate) are paired bootstrap 95% intervals over instances; pooled, the
instances of all seeds are resampled within their seed (stratified paired bootstrap over
seeds x instances). The targets:

- GRPO-mutant minus SFT kill rate: pooled interval above 0 and the point estimate >= 0 in every seed;
- GRPO-speed minus GRPO-mutant runtime: pooled interval below 0 and the point estimate < 0 in every seed;
- GKD minus SFT kill rate: pooled interval not entirely below 0.

Prints a table, writes ``benchmarks/results/bench_learning.json`` (per-seed and pooled results, machine,
versions, load; ``bench_learning_quick.json`` with ``--quick``) and the plot next to it
(``bench_learning_pareto.png``: one point per seed and model).
``--quick`` runs the reduced demo (``DemoConfig.quick()``): it checks the machinery, its models are too
small to learn anything. ``--jobs N`` runs N seeds at once in separate processes (each with its
configured torch threads). ``--set FIELD=VALUE`` overrides a ``DemoConfig`` field for every seed
(e.g. ``--set gkd_steps=0 --set grpo_steps=100``), for studies of the training settings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

# measure the checkout this file is in (not whichever fastdistill the environment has installed)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
RESULTS = Path(__file__).parent / "results"
MODELS = ("base", "sft", "gkd", "grpo_mutant", "grpo_speed", "teacher")


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def parse_overrides(items: list[str]) -> dict:
    """``["grpo_steps=80", "grpo_lr=1e-4"]`` -> typed DemoConfig overrides (values parsed as JSON, else strings)."""
    from dataclasses import fields

    from fastdistill.demo import DemoConfig

    known = {f.name for f in fields(DemoConfig)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise SystemExit(
                f"--set {item!r}: expected FIELD=VALUE with a DemoConfig field ({', '.join(sorted(known))})"
            )
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run_seed(seed: int, quick: bool, out_dir: str, overrides: dict | None = None, reuse: bool = False) -> dict:
    """One demo run; returns the parts of its report the benchmark keeps. With ``reuse``, a finished run's
    ``seed_<seed>/report.json`` in ``out_dir`` is read instead (it must have the same configuration)."""
    import logging

    from fastdistill.demo import DemoConfig, run_demo

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [seed {seed}] %(message)s", force=True)
    cfg = replace(DemoConfig.quick() if quick else DemoConfig(), **(overrides or {}), seed=seed)
    t0 = time.perf_counter()
    seed_dir = Path(out_dir) / f"seed_{seed}"
    done = seed_dir / "report.json"
    reused = reuse and done.is_file()
    if reused:
        report = json.loads(done.read_text(encoding="utf-8"))
        if report["config"] != json.loads(json.dumps(asdict(cfg))):
            raise SystemExit(f"--reuse: {done} was run with another configuration")
        logging.info("reusing %s (wall time %.0f s)", done, report["wall_time_s"])
    else:
        report = run_demo(seed_dir, cfg)
    models = {**report["students"], "teacher": report["teacher"]}
    return {
        "seed": seed,
        "wall_time_s": report["wall_time_s"] if reused else round(time.perf_counter() - t0, 1),
        "timings_s": report["timings_s"],
        "load_after": _load(),
        "environment": report["environment"],
        "config": asdict(cfg),
        "n_held_out": report["n_held_out"],
        "held_out_names": report["held_out_names"],
        "models": {
            name: {
                "kill_rate": r["kill_rate"],
                "kill_rate_sampled": r["sampled"]["kill_rate"],
                "kill_rate_all": r["kill_rate_all"],
                "pass_rate": r["pass_rate"],
                "runtime_ms": None if r["runtime_s"] is None else r["runtime_s"] * 1e3,
                "n_timed": r["n_timed"],
                "per_instance": r["per_instance"],
                "sampled": r["sampled"],
            }
            for name, r in models.items()
        },
        "comparisons": report["acceptance"]["comparisons"],
        "curation_rows_kept": report["curation"]["rows_kept"],
        "grpo_rewards": {b: report["training"][f"grpo_{b}"]["rewards"] for b in ("mutant", "speed")},
        # diagnostics of the training: share of GRPO prompt groups with no reward spread (no signal), and how
        # many held-out greedy completions each later stage left identical to SFT's
        "grpo_frac_reward_zero_std": {
            b: _mean(report["training"][f"grpo_{b}"].get("frac_reward_zero_std") or []) for b in ("mutant", "speed")
        },
        "identical_to_sft": report["identical_to_sft"].get("held_out"),
    }


def pooled(per_seed: list[dict], resamples: int) -> dict:
    """Stratified paired bootstrap over seeds x instances, and the targets."""
    from types import SimpleNamespace

    from fastdistill.demo import acceptance

    students = {}
    for name in MODELS:
        per_instance: dict[str, list] = {}
        for run in per_seed:
            for key, values in run["models"][name]["per_instance"].items():
                per_instance.setdefault(key, []).extend(values)
        students[name] = {"per_instance": per_instance, "sampled": per_seed[0]["models"][name]["sampled"]}
    strata = [run["seed"] for run in per_seed for _ in range(run["n_held_out"])]
    acc = acceptance(
        students,
        f"pooled over seeds {[r['seed'] for r in per_seed]}",
        SimpleNamespace(bootstrap_resamples=resamples, seed=0),
        strata=strata,
    )
    comps = acc["comparisons"]
    kill, speed, gkd = (
        comps[k] for k in ("grpo_mutant_vs_sft_kill", "grpo_speed_vs_grpo_mutant_runtime", "gkd_vs_sft_kill")
    )
    per_seed_diff = {key: [run["comparisons"][key]["diff"] for run in per_seed] for key in comps}
    targets = {
        "grpo_mutant_above_sft": bool(
            acc["grpo_mutant_kill_rate_above_sft"]
            and all(d is not None and d >= 0 for d in per_seed_diff["grpo_mutant_vs_sft_kill"])
        ),
        "grpo_speed_faster": bool(
            acc["grpo_speed_faster_than_mutant"]
            and all(d is not None and d < 0 for d in per_seed_diff["grpo_speed_vs_grpo_mutant_runtime"])
        ),
        "gkd_not_below_sft": bool(acc["gkd_not_below_sft"]),
    }
    means = {
        name: {k: _mean(v) for k, v in students[name]["per_instance"].items() if k != "kill_sampled"} for name in MODELS
    }
    return {
        "comparisons": comps,
        "per_seed_diff": per_seed_diff,
        "targets": targets,
        "means": means,
        "statements": [kill["statement"], speed["statement"], gkd["statement"]],
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def table(per_seed: list[dict], pool: dict) -> str:
    header = (
        f"{'seed':>4} {'model':<12} {'kill greedy':>11} {'kill sampled':>12} {'kill all':>8} {'pass':>6} "
        f"{'runtime ms':>10}"
    )
    lines = [header]
    for run in per_seed:
        for name, r in run["models"].items():
            lines.append(
                f"{run['seed']:>4} {name:<12} {_fmt(r['kill_rate']):>11} {_fmt(r['kill_rate_sampled']):>12} "
                f"{_fmt(r['kill_rate_all']):>8} {_fmt(r['pass_rate']):>6} {_fmt(r['runtime_ms'], '.2f'):>10}"
            )
    lines += ["", "per seed (b - a, 95% CI):"]
    for run in per_seed:
        for c in run["comparisons"].values():
            lines.append(f"  seed {run['seed']}: {c['statement']}")
    lines += ["", "pooled (stratified by seed):"] + [f"  {s}" for s in pool["statements"]]
    lines += ["", "targets: " + ", ".join(f"{k} {'MET' if v else 'NOT MET'}" for k, v in pool["targets"].items())]
    return "\n".join(lines)


def plot(per_seed: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "base": "tab:olive",
        "sft": "tab:blue",
        "gkd": "tab:purple",
        "grpo_mutant": "tab:red",
        "grpo_speed": "tab:green",
        "teacher": "tab:gray",
    }
    markers = "os^DvP*X"
    fig, ax = plt.subplots(figsize=(7, 4.8), dpi=110)
    for k, run in enumerate(per_seed):
        for name, r in run["models"].items():
            if r["runtime_ms"] is None:
                continue
            ax.scatter(
                r["runtime_ms"],
                r["kill_rate_all"],
                color=colors[name],
                marker=markers[k % len(markers)],
                s=50,
                label=name if k == 0 else None,
            )
    for k, run in enumerate(per_seed):
        ax.scatter([], [], color="black", marker=markers[k % len(markers)], label=f"seed {run['seed']}")
    ax.set_xlabel("mean runtime of passing greedy test files (ms; lower is better)")
    ax.set_ylabel("held-out kill rate (greedy + samples; higher is better)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("fastdistill demo over seeds: one point per seed and model", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3 for the targets)")
    parser.add_argument("--quick", action="store_true", help="the reduced demo (checks the machinery only)")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, in separate processes")
    parser.add_argument("--output-dir", default=None, help="demo outputs (default: a temporary folder)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples of the pooled intervals")
    parser.add_argument(
        "--out",
        default=None,
        help="the JSON result (default: benchmarks/results/bench_learning.json, "
        "bench_learning_quick.json with --quick)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a DemoConfig field for every seed (repeatable), e.g. --set grpo_steps=80: "
        "for studies of the training settings",
    )
    parser.add_argument("--reuse", action="store_true",
                        help="read a seed's finished report from --output-dir instead of running it again")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out_dir = args.output_dir or os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_learning")
    load_before, t0 = _load(), time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            per_seed = list(
                pool.map(run_seed, seeds, [args.quick] * len(seeds), [out_dir] * len(seeds), [overrides] * len(seeds),
                         [args.reuse] * len(seeds))
            )
    else:
        per_seed = [run_seed(seed, args.quick, out_dir, overrides, args.reuse) for seed in seeds]
    pool_result = pooled(per_seed, args.resamples)
    result = {
        "quick": args.quick,
        "seeds": seeds,
        "overrides": overrides,
        "jobs": args.jobs,
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "load_before": load_before,
        "load_after": _load(),
        "environment": per_seed[0]["environment"],
        "pooled": pool_result,
        "per_seed": per_seed,
    }
    out = Path(args.out or RESULTS / ("bench_learning_quick.json" if args.quick else "bench_learning.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(per_seed, out.with_name(out.stem + "_pareto.png"))
    sys.stdout.write(
        table(per_seed, pool_result) + f"\n\nwall time {result['wall_time_s']:.0f} s, load "
        f"{load_before} -> {result['load_after']}; wrote {out}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
