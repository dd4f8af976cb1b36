"""Mutation-scoring test files as a small student writes them: the engine now against a git revision.

Students' files are not the bundled examples' clean reference tests: many import a misspelt name (the
collection fails), many assert something false (the tests fail on the code), some pass. This benchmark
builds such a batch from the demo's held-out family instances, a third of each kind (the reference tests; the
name misspelt; the first assert negated), and scores it with :func:`fastdistill.rewards.mutation.score_batch`
(all mutants up to ``--max-mutants``, cache off), with ``fastdistill/`` as it is now and as of ``--ref`` (a
git revision, extracted with ``git archive`` and run in a subprocess), alternating, ``--rounds`` times each.
It checks that both give the same result for every file.

Prints a table and writes ``benchmarks/results/bench_model_files.json``.
Usage: ``python benchmarks/bench_model_files.py --ref HEAD~1 [--files 300] [--rounds 2] [--workers 2]``
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_rewards import extract_library, run_script  # the same git-archive checkout of an older engine

_SCRIPT = """
import json, sys, time
from fastdistill.rewards.mutation import score_batch
files = json.load(open(sys.argv[1]))
workers, max_mutants = int(sys.argv[2]), int(sys.argv[3])
score_batch([tuple(files[0][:2]) + (max_mutants, None)], n_workers=workers, use_cache=False)  # workers started
start = time.perf_counter()
results, _ = score_batch([(code, tests, max_mutants, None) for code, tests, _ in files], n_workers=workers,
                         use_cache=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "results": [[r.baseline_ok, r.killed, r.total] for r in results]}))
"""


def model_like_files(n: int) -> list[tuple[str, str, str]]:
    """``n`` (code, tests, kind) triples from the demo's held-out instances: passing, import error, failing."""
    from fastdistill.demo.families import family_examples

    _, held_out = family_examples(0, 1, (n + 2) // 3)
    files = []
    for ex in held_out:
        code, tests, name = ex["code"], ex["tests"], ex["name"].rsplit("_", 1)[0]
        files.append((code, tests, "passes"))
        files.append((code, tests.replace(f"import {name}", f"import {name}x", 1), "import error"))
        files.append((code, tests.replace("    assert ", "    assert not ", 1), "fails"))
    return files[:n]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", required=True, help="the git revision whose engine to compare with")
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-mutants", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).with_name("results") / "bench_model_files.json"))
    args = parser.parse_args()
    files = model_like_files(args.files)
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        extract_library(args.ref, d)
        files_json = str(Path(d) / "files.json")
        Path(files_json).write_text(json.dumps(files))
        runs = {"now": [], args.ref: []}
        for _ in range(args.rounds):  # alternating, so a machine that drifts moves both alike
            runs[args.ref].append(run_script(d, _SCRIPT, files_json, args.workers, args.max_mutants))
            runs["now"].append(run_script(None, _SCRIPT, files_json, args.workers, args.max_mutants))
    identical = all(r["results"] == runs["now"][0]["results"] for rs in runs.values() for r in rs)
    rows = []
    for engine, rs in runs.items():
        seconds = [r["seconds"] for r in rs]
        rows.append({"engine": engine, "seconds": [round(s, 2) for s in seconds],
                     "median_s": round(statistics.median(seconds), 2),
                     "ms_per_file": round(statistics.median(seconds) / len(files) * 1e3, 1)})
    ratio = rows[1]["median_s"] / rows[0]["median_s"]
    kinds = {k: sum(kind == k for _, _, kind in files) for k in ("passes", "import error", "fails")}
    results = runs["now"][0]["results"]
    report = {"files": len(files), "kinds": kinds, "workers": args.workers, "max_mutants": args.max_mutants,
              "rows": rows, "speedup_vs_ref": round(ratio, 2), "identical_results": identical,
              "passed_files": sum(ok for ok, _, _ in results), "killed": sum(k for _, k, _ in results),
              "mutants": sum(t for _, _, t in results), "load_average_at_start": load_start,
              "load_average_at_end": os.getloadavg(), "cores": os.cpu_count(), "python": sys.version.split()[0],
              "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"{len(files)} files ({', '.join(f'{v} {k}' for k, v in kinds.items())}), {args.workers} workers")
    print(f"{'engine':24s} {'seconds (each round)':>24s} {'median s':>9s} {'ms/file':>8s}")
    for r in rows:
        print(f"{r['engine']:24s} {' '.join(map(str, r['seconds'])):>24s} {r['median_s']:9} {r['ms_per_file']:8}")
    print(f"now vs {args.ref}: {ratio:.2f}x; identical results: {identical}; "
          f"load {load_start[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
