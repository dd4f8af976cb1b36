"""Reward-engine throughput on the bundled examples: fastdistill vs naive vs mutmut, one run.

* fastdistill: ``mutation_scores`` over every example (reference tests), all cores, cache cleared.
* previous engine (``--engine-ref REV``, optional): the same call with ``fastdistill/`` as of git
  revision REV (extracted with ``git archive`` into a temp dir, run in a subprocess), for a
  before/after comparison under the same load.
* naive: one fresh ``python -m pytest -x`` per mutant (same mutants, same tests), the same number
  of parallel processes, on a sample of examples (it is slow). Per-mutant timeout: 3x the naive
  run of the original code on that example + 1 s (a timeout counts as killed).
* mutmut (3.x): ``mutmut run`` in a temp project per example (its own mutants and runner), on a
  few examples; its rate is its mutants / wall seconds including its own set-up.

* callers: curation's ``tests_exec_eval`` on the examples x2 through the batch scorer vs row by row (warm pool,
  and cold: a worker per call, the previous behaviour), identical results checked; a loop of single
  ``mutation_score`` calls vs one batched call (each generating its mutants); a small ``run_tests``
  warm (back to back, and 0.3 s apart) vs cold (median ms).

Prints tables and writes ``benchmarks/results/bench_rewards.json`` and ``bench_rewards_callers.json``.
Usage: ``python benchmarks/bench_rewards.py [--naive-examples 6] [--max-mutants 30] [--engine-ref HEAD~2]
[--callers-only] [--workers 2]``
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastdistill.data.examples import load_examples
from fastdistill.rewards import clear_cache, generate_mutants, mutation_scores

ROOT = Path(__file__).resolve().parents[1]
MUTMUT_EXAMPLES = ("binary_search", "bank_account", "to_roman")


def naive_one(tests, source, timeout):
    with tempfile.TemporaryDirectory() as d:
        Path(d, "solution.py").write_text(source)
        Path(d, "test_solution.py").write_text(tests)
        start = time.perf_counter()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "test_solution.py"], cwd=d, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return True, True, time.perf_counter() - start
        return done.returncode != 0, False, time.perf_counter() - start


def naive(examples, max_mutants, workers):
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:  # the original code once per example, to set timeouts
        base = list(pool.map(lambda e: naive_one(e["tests"], e["code"], 120), examples))
        jobs = []
        for e, (_, _, base_s) in zip(examples, base):
            jobs += [(e["tests"], m.source, 3 * base_s + 1.0)
                     for m in generate_mutants(e["code"], max_mutants=max_mutants)]
        runs = list(pool.map(lambda j: naive_one(*j), jobs))
    return {"mutants": len(jobs), "killed": sum(r[0] for r in runs), "timed_out": sum(r[1] for r in runs),
            "seconds": time.perf_counter() - start}


def fast(examples, max_mutants, workers):
    clear_cache()
    start = time.perf_counter()
    results = mutation_scores([e["code"] for e in examples], [e["tests"] for e in examples], n_workers=workers,
                              max_mutants=max_mutants)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    mutation_scores([e["code"] for e in examples], [e["tests"] for e in examples], n_workers=workers,
                    max_mutants=max_mutants)
    cached_s = time.perf_counter() - start
    per_mutant = [[m.killed for m in r.mutants] for r in results]
    return {"mutants": sum(r.total for r in results), "killed": sum(r.killed for r in results),
            "timed_out": sum(r.timed_out for r in results), "seconds": seconds, "cached_s": cached_s,
            "per_mutant": per_mutant}


_ENGINE_SCRIPT = """
import json, sys, time
from fastdistill.data.examples import load_examples
from fastdistill.rewards import mutation_scores
ex = load_examples()
t = time.perf_counter()
rs = mutation_scores([e["code"] for e in ex], [e["tests"] for e in ex], n_workers=int(sys.argv[1]),
                     max_mutants=int(sys.argv[2]))
s = time.perf_counter() - t
print(json.dumps({"mutants": sum(r.total for r in rs), "killed": sum(r.killed for r in rs),
                  "timed_out": sum(r.timed_out for r in rs), "seconds": s,
                  "per_mutant": [[m.killed for m in r.mutants] for r in rs]}))
"""


def extract_library(rev, dest):
    """Write ``fastdistill/`` as of git revision ``rev`` into ``dest`` (the working tree is untouched)."""
    archive = subprocess.run(["git", "archive", rev, "fastdistill"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def run_script(src, script, *args):
    """Run ``script`` in a fresh interpreter that imports ``fastdistill/`` from ``src`` (None: this checkout);
    returns the JSON object its last output line holds."""
    src = str(src or ROOT)
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=src,
                          env=dict(os.environ, PYTHONPATH=src), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def engine_at(rev, max_mutants, workers):
    """The same measurement with the library as of git revision ``rev`` (the working tree is untouched)."""
    with tempfile.TemporaryDirectory() as d:
        extract_library(rev, d)
        return run_script(d, _ENGINE_SCRIPT, workers, max_mutants)


def mutmut_run(example, workers, timeout):
    """``mutmut run`` on one example in a temp project; mutants, killed and wall seconds."""
    exe = shutil.which("mutmut") or str(Path(sys.executable).with_name("mutmut"))
    if not Path(exe).exists():
        return {"error": "mutmut is not installed (pip install mutmut)"}
    with tempfile.TemporaryDirectory() as d:
        Path(d, "tests").mkdir()
        Path(d, "solution.py").write_text(example["code"])
        Path(d, "tests", "test_solution.py").write_text(example["tests"])
        Path(d, "setup.cfg").write_text(
            "[mutmut]\nsource_paths=solution.py\npytest_add_cli_args_test_selection=tests/\n")
        start = time.perf_counter()
        try:
            done = subprocess.run([exe, "run", "--max-children", str(workers)], cwd=d, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, PYTHONWARNINGS="ignore", TERM="dumb"))
        except subprocess.TimeoutExpired:
            return {"error": f"mutmut run did not finish within {timeout}s"}
        seconds = time.perf_counter() - start
        stats = Path(d, "mutants", "mutmut-cicd-stats.json")
        subprocess.run([exe, "export-cicd-stats"], cwd=d, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        if stats.exists():
            data = json.loads(stats.read_text())
            total = data.get("total", 0)
            killed = data.get("killed", 0) + data.get("timeout", 0)
            return {"mutants": total, "killed": killed, "timed_out": data.get("timeout", 0), "seconds": seconds}
        counts = re.findall(r"(\d+)/(\d+)\s+\S+\s+(\d+)", done.stdout)
        if done.returncode != 0 or not counts:
            return {"error": f"mutmut exited {done.returncode}: {(done.stderr or done.stdout)[-500:]}"}
        total = int(counts[-1][1])
        return {"mutants": total, "killed": int(counts[-1][2]), "timed_out": None, "seconds": seconds}


def callers(examples, workers, max_mutants=20, single_calls=21, run_tests_calls=20, cold_rows=34):
    """One engine for every caller: curation's ``tests_exec_eval`` (batched vs row by row, warm vs the old cold
    per-call workers), single ``mutation_score`` calls in a loop vs one batched call, a warm ``run_tests``."""
    import datasets
    import statistics

    from fastdistill.curation import tests_exec_eval
    from fastdistill.curation.tests_eval import TESTS_COLUMNS, eval_tests_one
    from fastdistill.rewards import close_idle_workers, mutation_score, run_tests, sandbox

    datasets.disable_progress_bars()
    rows = examples + examples  # the bundled examples x2
    ds = datasets.Dataset.from_dict({"code": [e["code"] for e in rows], "tests": [e["tests"] for e in rows]})
    out = {"rows": len(rows), "max_mutants": max_mutants, "workers": workers}

    def strip(r):
        return {k: v for k, v in r.items() if k != "tests_time_s"}

    close_idle_workers()
    clear_cache()
    t = time.perf_counter()
    batched = tests_exec_eval(ds, max_mutants=max_mutants, num_proc=workers)
    out["tests_exec_eval_batched_s"] = time.perf_counter() - t  # includes starting the warm workers
    batched_rows = [strip({k: batched[k][i] for k in TESTS_COLUMNS}) for i in range(len(rows))]
    for label, warm, n in (("row_by_row_warm", True, len(rows)), ("row_by_row_cold", False, cold_rows)):
        close_idle_workers()
        clear_cache()
        sandbox.KEEP_WARM = warm  # cold: a worker per call, as every call did before the warm pool
        try:
            t = time.perf_counter()
            ref = [strip(eval_tests_one(e["code"], e["tests"], max_mutants=max_mutants)) for e in rows[:n]]
            out[f"tests_exec_eval_{label}_s"] = time.perf_counter() - t
        finally:
            sandbox.KEEP_WARM = True
        out[f"identical_to_{label}"] = ref == batched_rows[:n]
        out[f"tests_exec_eval_{label}_rows"] = n
        out[f"tests_exec_eval_{label}_rows_per_s"] = round(n / out[f"tests_exec_eval_{label}_s"], 2)
    out["tests_exec_eval_batched_rows_per_s"] = round(len(rows) / out["tests_exec_eval_batched_s"], 2)

    problems = examples[:single_calls]
    close_idle_workers()
    clear_cache()
    mutation_score(problems[0]["code"], problems[0]["tests"], max_mutants=max_mutants, use_cache=False)  # warm up
    clear_cache()  # both ways generate their mutants (the memo of the one run first would serve the other)
    t = time.perf_counter()
    singles = [mutation_score(e["code"], e["tests"], max_mutants=max_mutants, n_workers=workers, use_cache=False)
               for e in problems]
    single_s = time.perf_counter() - t
    clear_cache()
    t = time.perf_counter()
    batch = mutation_scores([e["code"] for e in problems], [e["tests"] for e in problems], max_mutants=max_mutants,
                            n_workers=workers, use_cache=False)
    batch_s = time.perf_counter() - t
    n_mut = sum(r.total for r in singles)
    out.update(single_call_problems=len(problems), single_calls_mutants_per_s=round(n_mut / single_s, 1),
               batched_mutants_per_s=round(sum(r.total for r in batch) / batch_s, 1),
               single_vs_batched_time_ratio=round(single_s / batch_s, 2),
               single_vs_batched_same_killed=[[m.killed for m in r.mutants] for r in singles]
               == [[m.killed for m in r.mutants] for r in batch])

    small = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    code = "def add(a, b):\n    return a + b\n"
    for label, warm, idle_s in (("warm", True, 0.0), ("warm_idle", True, 0.3), ("cold", False, 0.0)):
        # warm: back-to-back calls; warm_idle: calls 0.3 s apart (the pre-forked zygote warms up meanwhile)
        close_idle_workers()
        run_tests(code, small, keep_warm=warm)
        times = []
        for _ in range(run_tests_calls if warm else 5):
            time.sleep(idle_s)
            t = time.perf_counter()
            assert run_tests(code, small, keep_warm=warm).ok
            times.append(time.perf_counter() - t)
        out[f"run_tests_small_{label}_median_ms"] = round(1000 * statistics.median(times), 1)
    for label, sealed in (("sealed", True), ("unsealed", False)):  # the sealed view's cost: once per worker
        sandbox.SEALED_VIEW = sealed
        starts = []
        try:
            for _ in range(3):
                close_idle_workers()
                t = time.perf_counter()
                run_tests(code, small, keep_warm=True)
                starts.append(time.perf_counter() - t)
        finally:
            sandbox.SEALED_VIEW = True
        out[f"worker_start_{label}_median_s"] = round(statistics.median(starts), 3)
    close_idle_workers()
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--naive-examples", type=int, default=6)
    parser.add_argument("--max-mutants", type=int, default=30)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--engine-ref", default=None, help="also measure fastdistill/ as of this git revision")
    parser.add_argument("--skip-mutmut", action="store_true")
    parser.add_argument("--callers-only", action="store_true",
                        help="only the one-engine-for-every-caller section "
                             "(curation rows/s, single calls, warm run_tests)")
    parser.add_argument("--callers-out",
                        default=str(Path(__file__).with_name("results") / "bench_rewards_callers.json"))
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "bench_rewards.json"))
    args = parser.parse_args()
    examples = load_examples()
    load_start = os.getloadavg()
    c = callers(examples, args.workers)
    c.update(load_average_at_start=load_start, load_average_at_end=os.getloadavg(), cores=os.cpu_count(),
             python=sys.version.split()[0])
    print(f"{'caller (bundled examples)':58s} {'value':>10s}")
    for key in ("tests_exec_eval_batched_rows_per_s", "tests_exec_eval_row_by_row_warm_rows_per_s",
                "tests_exec_eval_row_by_row_cold_rows_per_s", "identical_to_row_by_row_warm",
                "identical_to_row_by_row_cold", "single_calls_mutants_per_s", "batched_mutants_per_s",
                "single_vs_batched_time_ratio", "single_vs_batched_same_killed", "run_tests_small_warm_median_ms",
                "run_tests_small_warm_idle_median_ms",
                "run_tests_small_cold_median_ms", "worker_start_sealed_median_s", "worker_start_unsealed_median_s"):
        print(f"{key:58s} {str(c[key]):>10s}")
    print(f"curation batched vs row-by-row cold (previous path): "
          f"{c['tests_exec_eval_batched_rows_per_s'] / c['tests_exec_eval_row_by_row_cold_rows_per_s']:.2f}x; "
          f"load {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    Path(args.callers_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.callers_out).write_text(json.dumps(c, indent=2))
    if args.callers_only:
        return
    load_start = os.getloadavg()

    f = fast(examples, args.max_mutants, args.workers)
    rows = [
        {"method": "fastdistill (worker pool, collect once)", "examples": len(examples), **_rate(f, len(examples))},
        {"method": "fastdistill (cache hit)", "examples": len(examples), "mutants": f["mutants"], "killed": f["killed"],
         "timed_out": f["timed_out"], "seconds": round(f["cached_s"], 4), "mutants_per_s": None,
         "completions_per_s": round(len(examples) / max(f["cached_s"], 1e-9), 1)},
    ]
    same_outcomes = None
    if args.engine_ref:
        old = engine_at(args.engine_ref, args.max_mutants, args.workers)
        rows.append({"method": f"fastdistill @ {args.engine_ref} (previous engine)", "examples": len(examples),
                     **_rate(old, len(examples))})
        pairs = [(a, b) for ra, rb in zip(f["per_mutant"], old["per_mutant"]) for a, b in zip(ra, rb)]
        same_outcomes = {"mutants_compared": len(pairs), "same_killed": sum(a == b for a, b in pairs)}

    sample = examples[:: max(1, len(examples) // args.naive_examples)][: args.naive_examples]
    n = naive(sample, args.max_mutants, args.workers)
    rows.append({"method": "naive (python -m pytest -x per mutant)", "examples": len(sample), **_rate(n, len(sample))})

    mutmut = {"measured": False}
    if not args.skip_mutmut:
        runs = {name: mutmut_run(next(e for e in examples if e["name"] == name), args.workers, 600)
                for name in MUTMUT_EXAMPLES}
        errors = {k: v["error"] for k, v in runs.items() if "error" in v}
        if errors:
            mutmut = {"measured": False, "reason": errors}
        else:
            total = {k: sum(r[k] or 0 for r in runs.values()) for k in ("mutants", "killed", "timed_out", "seconds")}
            mutmut = {"measured": True, "examples": list(MUTMUT_EXAMPLES), "per_example": runs,
                      "note": "mutmut generates its own mutants (a different set); rate = its mutants / wall s"}
            rows.append({"method": f"mutmut {_mutmut_version()} (mutmut run, own mutants)", "examples": len(runs),
                         **_rate(total, len(runs))})

    fast_rate = f["mutants"] / f["seconds"]
    report = {
        "cores": os.cpu_count(), "workers": args.workers, "max_mutants": args.max_mutants, "rows": rows,
        "speedup_mutants_per_s_vs_naive": round(fast_rate / (n["mutants"] / n["seconds"]), 1),
        "target_speedup": 30,
        "speedup_vs_previous_engine": (round(fast_rate / (rows[2]["mutants"] / rows[2]["seconds"]), 1)
                                       if args.engine_ref else None),
        "outcomes_vs_previous_engine": same_outcomes,
        "speedup_vs_mutmut": (round(fast_rate / (rows[-1]["mutants"] / rows[-1]["seconds"]), 1)
                              if mutmut.get("measured") else None),
        "naive_timeout_rule": "3 x naive run of the original code + 1 s; timeouts count as killed",
        "mutmut": mutmut, "python": sys.version.split()[0],
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
    }
    print(f"{'method':48s} {'ex':>4s} {'mutants':>8s} {'killed':>7s} {'t/o':>4s} {'sec':>8s} {'mut/s':>8s} "
          f"{'compl/s':>8s}")
    for r in rows:
        print(f"{r['method']:48s} {r['examples']:4d} {r['mutants']:8d} {r['killed']:7d} {str(r['timed_out']):>4s} "
              f"{r['seconds']:8} {str(r['mutants_per_s']):>8s} {str(r['completions_per_s']):>8s}")
    print(f"speed-up vs naive (mutants/s): {report['speedup_mutants_per_s_vs_naive']}x   "
          f"vs previous engine: {report['speedup_vs_previous_engine']}   vs mutmut: {report['speedup_vs_mutmut']}   "
          f"load {load_start[0]:.1f} -> {report['load_average_at_end'][0]:.1f}")
    if same_outcomes:
        print("per-mutant killed identical to previous engine: "
              f"{same_outcomes['same_killed']}/{same_outcomes['mutants_compared']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


def _rate(m, n_examples):
    return {"mutants": m["mutants"], "killed": m["killed"], "timed_out": m["timed_out"],
            "seconds": round(m["seconds"], 2), "mutants_per_s": round(m["mutants"] / m["seconds"], 1),
            "completions_per_s": round(n_examples / m["seconds"], 3)}


def _mutmut_version():
    try:
        from importlib.metadata import version

        return version("mutmut")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    main()
