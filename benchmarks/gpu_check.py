"""One short device run for the distillation losses: CUDA tests, GPU benchmark table, profile.

Prepared without a GPU, to spend the lent device's minutes on measuring. Designed to finish in
under 8 minutes on an H200 (each phase has its own time budget and records what it skipped):

1. ``pytest tests/losses/test_cuda.py tests/losses/test_triton_kernels.py`` (the Triton kernels
   compiled for the GPU, the default compiled kernels, the fused GKD trainer in bf16): 120 s cap.
2. Benchmark (no case starts after 210 s), bf16, forward + backward, median of 5 timed runs after
   one full-size warm-up, extra peak memory (``max_memory_allocated`` minus the allocated bytes after
   the inputs), all in one process (the first call of each kernel compiles; the warm-up absorbs it;
   a backend that failed and fell back is listed in the row's ``backends_failed``):

   - from hidden states, ``V = 151936``, ``N in {1024, 4096, 8192}``, ``H in {896, 3584}``: TRL
     ``ChunkedDivergenceFunction`` (beta 0.5 and 1), ours fused JSD (beta 0.5) and fused reverse KL
     on chosen tokens, each with the default kernels and with ``FASTDISTILL_TRITON=1``, and the four
     projections alone (the floor);
   - on logits at 2048 x 32000 and 4096 x 151936: TRL ``GKDTrainer.generalized_jsd_loss`` (beta 0.5
     and 1) and ours ``jsd_loss`` / ``reverse_kl_on_logits`` / ``reverse_kl_on_chosen``, default and
     Triton.

3. ``torch.profiler`` of one forward + backward of TRL chunked, ours fused (default) and ours fused
   (Triton) at N=1024, H=896: the top kernels by device time, as a table and as JSON.

Everything goes to ``--out`` (default ``$OUT/gpu_check`` when ``$OUT`` is set, else
``benchmarks/results/gpu_check``): ``pytest.txt``, ``bench.json`` (rewritten after every case, so a
kill keeps what finished), ``profile_*.txt`` and ``profile.json``. Ratios vs TRL are in the table printed
at the end. Usage on the device::

    python benchmarks/gpu_check.py                 # all three phases (needs CUDA torch, trl, triton,
                                                   # pytest and pytest-timeout, as setup.cfg asks for it)
    python benchmarks/gpu_check.py --skip-tests --budget-s 300
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # this checkout's fastdistill, not an installed one
sys.path.insert(0, str(HERE))

V_BIG = 151936
FUSED_SHAPES = [(1024, 896), (4096, 896), (8192, 896), (1024, 3584), (4096, 3584), (8192, 3584)]
FUSED_PATHS = ["trl_chunked", "trl_chunked_rkl", "ours_fused", "ours_fused_triton", "ours_fused_chosen",
               "ours_fused_chosen_triton", "projection_floor"]
LOGIT_SHAPES = [(2048, 32000), (4096, V_BIG)]
LOGIT_PATHS = ["trl_gkd_jsd", "trl_gkd_rkl", "ours_jsd", "ours_jsd_triton", "ours_rkl_logits",
               "ours_rkl_logits_triton", "ours_rkl_chosen", "ours_rkl_chosen_triton"]
# reference of each of our paths (ratios in the table)
REFERENCE = {"ours_fused": "trl_chunked", "ours_fused_triton": "trl_chunked", "projection_floor": "trl_chunked",
             "ours_fused_chosen": "trl_chunked_rkl", "ours_fused_chosen_triton": "trl_chunked_rkl",
             "ours_jsd": "trl_gkd_jsd", "ours_jsd_triton": "trl_gkd_jsd", "ours_rkl_logits": "trl_gkd_rkl",
             "ours_rkl_logits_triton": "trl_gkd_rkl", "ours_rkl_chosen": "trl_gkd_rkl",
             "ours_rkl_chosen_triton": "trl_gkd_rkl"}
REPEATS = 5


def cases() -> list[dict]:
    out = []
    for n, h in FUSED_SHAPES:  # the first shape is the one the issue quotes: measured first
        out += [{"group": "issue9", "path": p, "tokens": n, "hidden": h, "vocab": V_BIG} for p in FUSED_PATHS]
    for n, v in LOGIT_SHAPES:
        out += [{"group": "issue2", "path": p, "tokens": n, "vocab": v} for p in LOGIT_PATHS]
    return out


def run_tests(out_dir: Path, timeout_s: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/losses/test_cuda.py",
           "tests/losses/test_triton_kernels.py", "--timeout", str(timeout_s)]
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # compiled kernels on the GPU
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        text, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = f"{exc.stdout or ''}{exc.stderr or ''}\nTIMEOUT after {timeout_s} s", 124
    (out_dir / "pytest.txt").write_text(text if isinstance(text, str) else text.decode())
    summary = [line for line in str(text).splitlines() if " passed" in line or " failed" in line or "error" in line]
    return {"returncode": rc, "seconds": round(time.perf_counter() - t0, 1), "summary": summary[-3:]}


def measure(case: dict, dtype) -> dict:
    """Median time of REPEATS forward + backward runs after one warm-up, and extra peak memory, on CUDA."""
    import torch

    from bench_losses import _drop_grads, _make_inputs, _run_case

    result = dict(case)
    try:
        inputs = _make_inputs(case, "cuda", dtype)
        _run_case(case, inputs, None)  # warm-up: compiles, cuBLAS heuristics, allocator
        _drop_grads(inputs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            loss = _run_case(case, inputs, None)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            _drop_grads(inputs)
        result.update(status="ok", time_s=statistics.median(times), times_s=times, loss=loss,
                      extra_peak_gb=max(torch.cuda.max_memory_allocated() - base, 0) / 1e9)
        from fastdistill.losses import kernels

        # a failed backend falls back silently (one warning): record it, or the row measures the fallback
        result["backends_failed"] = sorted(kernels.BACKEND.failed)
    except Exception as exc:  # noqa: BLE001 - an OOM or a kernel error is a result to record, not a reason to stop the run
        result.update(status="OOM" if "out of memory" in str(exc).lower() else "error",
                      error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
    finally:
        os.environ.pop("FASTDISTILL_TRITON", None)
        inputs = None
        torch.cuda.empty_cache()
    return result


def table(results: list[dict]) -> str:
    by_key = {(r["group"], r["path"], r["tokens"], r.get("hidden"), r["vocab"]): r for r in results}
    lines = ["| shape | path | time (ms) | extra peak (GB) | time / ref | mem / ref | ref |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        ref = by_key.get((r["group"], REFERENCE.get(r["path"], ""), r["tokens"], r.get("hidden"), r["vocab"]))
        ok = r.get("status") == "ok" and ref is not None and ref.get("status") == "ok"
        tr = f"{r['time_s'] / ref['time_s']:.2f}x" if ok else "-"
        mr = (f"{r['extra_peak_gb'] / ref['extra_peak_gb']:.2f}x" if ok and ref["extra_peak_gb"] > 0
              and r["path"] != "projection_floor" else "-")
        shape = f"N={r['tokens']} H={r['hidden']}" if r["group"] == "issue9" else f"{r['tokens']} x {r['vocab']}"
        t = f"{1000 * r['time_s']:.2f}" if r.get("status") == "ok" else r.get("status", "?")
        m = f"{r['extra_peak_gb']:.2f}" if r.get("status") == "ok" else "-"
        lines.append(f"| {shape} | {r['path']} | {t} | {m} | {tr} | {mr} | {REFERENCE.get(r['path'], '')} |")
    return "\n".join(lines)


def run_bench(out_dir: Path, budget_s: float) -> list[dict]:
    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.pop("TRITON_INTERPRET", None)
    results, t_start = [], time.perf_counter()
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "platform": platform.platform(),
            "dtype": "bfloat16", "repeats": REPEATS, "note": "median of REPEATS after one warm-up, one process"}
    for case in cases():
        if time.perf_counter() - t_start > budget_s:
            results.append(dict(case, status="skipped (time budget)"))
            continue
        r = measure(case, torch.bfloat16)
        results.append(r)
        t = f"{1000 * r['time_s']:.2f} ms" if r.get("status") == "ok" else r.get("status") + " " + r.get("error", "")
        print(f"{case['path']:>26} N={case['tokens']} H={case.get('hidden', '-')} V={case['vocab']}: {t}", flush=True)
        (out_dir / "bench.json").write_text(json.dumps({"machine": meta, "results": results}, indent=2) + "\n")
    (out_dir / "bench.json").write_text(json.dumps({"machine": meta, "results": results, "table": table(results)},
                                                   indent=2) + "\n")
    return results


def run_profile(out_dir: Path) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench_losses import _drop_grads, _make_inputs, _run_case

    summary = {}
    for path in ("trl_chunked", "ours_fused", "ours_fused_triton"):
        case = {"group": "issue9", "path": path, "tokens": 1024, "hidden": 896, "vocab": V_BIG}
        try:
            inputs = _make_inputs(case, "cuda", torch.bfloat16)
            _run_case(case, inputs, None)  # warm-up outside the trace
            _drop_grads(inputs)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                _run_case(case, inputs, None)
                torch.cuda.synchronize()
            events = prof.key_averages()
            key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
            (out_dir / f"profile_{path}.txt").write_text(events.table(sort_by=key, row_limit=25))
            top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:15]
            total = sum(getattr(e, key) for e in events)
            summary[path] = {"device_time_total_us": total,
                             "top": [{"name": e.key[:120], "count": e.count, "self_device_us": getattr(e, key)}
                                     for e in top]}
        except Exception as exc:  # noqa: BLE001 - record and go on with the next profile
            summary[path] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
        finally:
            os.environ.pop("FASTDISTILL_TRITON", None)
            inputs = None
            torch.cuda.empty_cache()
    (out_dir / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_out = Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else HERE / "results" / "gpu_check"
    parser.add_argument("--out", default=str(default_out))
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--tests-timeout-s", type=int, default=120)
    parser.add_argument("--budget-s", type=float, default=210, help="benchmark phase: start no case after this")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check needs a CUDA device", file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {}
    if not args.skip_tests:
        report["tests"] = run_tests(out_dir, args.tests_timeout_s)
        print("tests:", report["tests"], flush=True)
    results = run_bench(out_dir, args.budget_s)
    print("\n" + table(results), flush=True)
    if not args.skip_profile:
        report["profile"] = {k: v.get("device_time_total_us", v.get("error")) for k, v in run_profile(out_dir).items()}
        print("profile (device us):", report["profile"], flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"done in {report['seconds']} s; files in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
