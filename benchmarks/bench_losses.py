"""Time and extra peak memory of the distillation losses vs TRL's (issues #2 and #9).

Each case runs forward + backward once in a fresh subprocess whose environment holds
``MALLOC_MMAP_THRESHOLD_=131072`` (glibc then returns large blocks to the OS immediately, so the
RSS high-water mark tracks live tensors). Extra peak memory is ``ru_maxrss`` minus the RSS measured
after the inputs are allocated (on CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated
bytes after the inputs). A case that runs out of memory (the worker caps its address space so it
fails cleanly instead of pushing a shared machine into swap or the OOM killer) is recorded as OOM.

Rows:
  #2 (on logits) at (tokens, vocab) = (2048, 32000) and (4096, 151936):
     TRL ``GKDTrainer.generalized_jsd_loss`` (beta 0.5 and 1), ours ``jsd_loss`` (beta 0.5),
     ``reverse_kl_on_logits``, ``reverse_kl_on_chosen``. Targets: memory <= 1/4 of TRL, time <= 1.2x.
  #9 (from hidden states) at N=1024, H=896, V=151936, beta 0.5:
     TRL GKD on materialized logits (projection included), TRL ``ChunkedDivergenceFunction``,
     the four projections alone (floor), ours logits path (project + ``jsd_loss``), ours fused.
     Targets: fused time <= 0.6x TRL chunked and <= 1.6x the floor; extra memory <= TRL chunked.

Usage::

    python benchmarks/bench_losses.py            # full CPU table (several minutes on 2 cores)
    python benchmarks/bench_losses.py --quick    # small shapes, seconds
    python benchmarks/bench_losses.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_losses.json"


# ---------------------------------------------------------------------------------------------
# case list
# ---------------------------------------------------------------------------------------------


def build_cases(quick: bool, logit_shapes: str | None = None) -> list[dict]:
    if logit_shapes:
        logit_shapes = [tuple(int(x) for x in shape.split("x")) for shape in logit_shapes.split(",")]
    else:
        logit_shapes = [(256, 4096), (512, 8192)] if quick else [(2048, 32000), (4096, 151936)]
    n, h, v = (128, 64, 8192) if quick else (1024, 896, 151936)
    cases = []
    for tokens, vocab in logit_shapes:
        for path in ("trl_gkd_jsd", "trl_gkd_rkl", "ours_jsd", "ours_rkl_logits", "ours_rkl_chosen"):
            cases.append({"group": "issue2", "path": path, "tokens": tokens, "vocab": vocab})
    for path in ("trl_gkd_materialized", "trl_chunked", "projection_floor", "ours_logits", "ours_fused"):
        cases.append({"group": "issue9", "path": path, "tokens": n, "hidden": h, "vocab": v})
    return cases


# ---------------------------------------------------------------------------------------------
# worker (runs one case in this process)
# ---------------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _randn(shape, gen, device, dtype, scale=1.0, requires_grad=False):
    """Allocate without transient copies (so the baseline is not below an earlier high-water mark)."""
    import torch

    t = torch.empty(shape, device=device, dtype=dtype)
    t.normal_(0.0, scale, generator=gen)
    return t.requires_grad_(requires_grad)


def _make_inputs(case, device, dtype):
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    n, v = case["tokens"], case["vocab"]
    if case["group"] == "issue2":
        inputs = {
            "s": _randn((n, v), gen, device, dtype, 2.0, requires_grad=True),
            "t": _randn((n, v), gen, device, dtype, 2.0),
            "labels": torch.randint(0, v, (n,), generator=gen, device=device),
        }
        inputs["labels"][: n // 16] = -100  # a few prompt positions
        inputs["t_lp"] = -torch.rand((n,), generator=gen, device=device) * 5
        return inputs
    h = case["hidden"]
    inputs = {
        "hs": _randn((n, h), gen, device, dtype, 1.0, requires_grad=True),
        "ws": _randn((v, h), gen, device, dtype, 0.05, requires_grad=True),
        "ht": _randn((n, h), gen, device, dtype, 1.0),
        "wt": _randn((v, h), gen, device, dtype, 0.05),
    }
    if "chosen" in case["path"]:  # the fused chosen-token path: labels and stored teacher log-probs
        inputs["labels"] = torch.randint(0, v, (n,), generator=gen, device=device)
        inputs["t_lp"] = -torch.rand((n,), generator=gen, device=device) * 5
    return inputs


def _run_case(case, inputs, chunk_size):
    import torch

    from fastdistill.losses import fused_jsd_loss, jsd_loss, reverse_kl_on_chosen, reverse_kl_on_logits

    path = case["path"]
    if path.endswith("_triton"):  # our Triton kernels (opt-in), else the default kernels
        os.environ["FASTDISTILL_TRITON"] = "1"
        path = path[: -len("_triton")]
    else:
        os.environ.pop("FASTDISTILL_TRITON", None)
    if path.startswith("trl_gkd") or path == "trl_chunked":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd import GKDTrainer

        trl_jsd = GKDTrainer.generalized_jsd_loss
    if case["group"] == "issue2":
        s, t, labels = inputs["s"], inputs["t"], inputs["labels"]
        if path == "trl_gkd_jsd":
            loss = trl_jsd(s, t, labels=labels, beta=0.5)
        elif path == "trl_gkd_rkl":
            loss = trl_jsd(s, t, labels=labels, beta=1.0)
        elif path == "ours_jsd":
            loss = jsd_loss(s, t, beta=0.5, mask=labels, chunk_size=chunk_size)
        elif path == "ours_rkl_logits":
            loss = reverse_kl_on_logits(s, t, mask=labels, chunk_size=chunk_size)
        elif path == "ours_rkl_chosen":
            loss = reverse_kl_on_chosen(s, labels, inputs["t_lp"], chunk_size=chunk_size)
        else:
            raise KeyError(path)
        loss.backward()
        return float(loss)

    hs, ws, ht, wt = inputs["hs"], inputs["ws"], inputs["ht"], inputs["wt"]
    if path == "trl_gkd_materialized":
        s_logits = hs @ ws.t()
        with torch.no_grad():
            t_logits = ht @ wt.t()
        loss = trl_jsd(s_logits, t_logits, beta=0.5)
    elif path in ("trl_chunked", "trl_chunked_rkl"):
        from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

        beta = 1.0 if path == "trl_chunked_rkl" else 0.5
        per_token, _entropy = ChunkedDivergenceFunction.apply(hs, ws, None, ht, wt, None, beta, 1.0)
        loss = per_token.mean()
    elif path == "projection_floor":
        with torch.no_grad():
            s_logits = hs @ ws.t()
            t_logits = ht @ wt.t()
            grad_h = s_logits @ ws  # stands in for d loss / d logits @ W_s
            grad_w = s_logits.t() @ hs
            del t_logits, grad_h, grad_w
        return None
    elif path == "ours_logits":
        s_logits = hs @ ws.t()
        with torch.no_grad():
            t_logits = ht @ wt.t()
        loss = jsd_loss(s_logits, t_logits, beta=0.5, chunk_size=chunk_size)
    elif path == "ours_fused":
        loss = fused_jsd_loss(hs, ws, ht, wt, beta=0.5, reduction="mean", chunk_size=chunk_size)
    elif path == "ours_fused_chosen":
        from fastdistill.losses import fused_reverse_kl_on_chosen

        loss = fused_reverse_kl_on_chosen(hs, ws, inputs["labels"], inputs["t_lp"], reduction="mean",
                                          chunk_size=chunk_size)
    else:
        raise KeyError(path)
    loss.backward()
    return float(loss)


CUDA_REPEATS = 5


def _drop_grads(inputs: dict) -> None:
    for value in inputs.values():
        if getattr(value, "grad", None) is not None:
            value.grad = None


def worker(case: dict, device: str, dtype_name: str, chunk_size: int | None, mem_limit_gb: float) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    if device == "cpu" and mem_limit_gb > 0:
        limit = int(mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = dict(case, device=device, dtype=dtype_name, chunk_size=chunk_size)
    try:
        # warm-up on a tiny shape: imports and lazy initialisation are not part of the measurement
        tiny = dict(case, tokens=8, vocab=64, **({"hidden": 16} if "hidden" in case else {}))
        _run_case(tiny, _make_inputs(tiny, device, dtype), chunk_size)
        gc.collect()
        inputs = _make_inputs(case, device, dtype)
        gc.collect()
        if device == "cuda":
            # GPU runs take milliseconds: one full-size warm-up (cuBLAS heuristics, allocator), then the
            # median of CUDA_REPEATS timed runs; gradients are dropped between runs so memory is per run
            _run_case(case, inputs, chunk_size)
            _drop_grads(inputs)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            times = []
            for _ in range(CUDA_REPEATS):
                t0 = time.perf_counter()
                loss = _run_case(case, inputs, chunk_size)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
                _drop_grads(inputs)
            result["time_s"] = sorted(times)[len(times) // 2]
            result["times_s"] = times
        else:
            base = _rss_bytes()
            result["baseline_maxrss_gb"] = _maxrss_bytes() / 1e9
            t0 = time.perf_counter()
            loss = _run_case(case, inputs, chunk_size)
            result["time_s"] = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else _maxrss_bytes()
        result["extra_peak_gb"] = max(peak - base, 0) / 1e9
        result["loss"] = loss
        result["status"] = "ok"
    except (RuntimeError, MemoryError) as exc:  # allocation failure under the address-space cap
        msg = str(exc)
        oom = isinstance(exc, MemoryError) or "alloc" in msg.lower() or "out of memory" in msg.lower()
        result["status"] = "OOM" if oom else "error"
        result["error"] = msg.splitlines()[0][:300] if msg else type(exc).__name__
    return result


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def run_in_subprocess(case, args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TRL_EXPERIMENTAL_SILENCE="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case), "--device", args.device,
           "--dtype", args.dtype, "--mem-limit-gb", str(args.mem_limit_gb)]
    if args.chunk_size:
        cmd += ["--chunk-size", str(args.chunk_size)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    status = "OOM" if proc.returncode in (-9, 137) else "error"
    return dict(case, status=status, error=" | ".join(tail)[:300], returncode=proc.returncode)


def _fmt_time(r):
    if r.get("status") != "ok" or "time_s" not in r:
        return r.get("status", "?")
    return f"{r['time_s']:.2f} s" if r["time_s"] >= 1 else f"{1000 * r['time_s']:.2f} ms"  # GPU cases take ms


def _fmt_mem(r):
    return f"{r['extra_peak_gb']:.2f} GB" if r.get("status") == "ok" and "extra_peak_gb" in r else r.get("status", "?")


def _ratio(a, b, key):
    if a.get("status") != "ok" or b is None or b.get("status") != "ok" or not b.get(key):
        return None
    return a[key] / b[key]


def _fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def summarize(results: list[dict]) -> dict:
    """Add ratios and target checks; print the tables."""
    summary = {"issue2": [], "issue9": []}
    by_key = {}
    for r in results:
        by_key[(r["group"], r["path"], r["tokens"], r["vocab"])] = r

    print("\n## Issue #2: losses on logits, forward + backward")
    print("| tokens x vocab | path | time | extra peak | time / TRL | mem / TRL |")
    print("|---|---|---|---|---|---|")
    reference = {"ours_jsd": "trl_gkd_jsd", "ours_rkl_logits": "trl_gkd_rkl", "ours_rkl_chosen": "trl_gkd_rkl"}
    for r in results:
        if r["group"] != "issue2":
            continue
        ref = by_key.get(("issue2", reference.get(r["path"], ""), r["tokens"], r["vocab"]))
        tr, mr = _ratio(r, ref, "time_s"), _ratio(r, ref, "extra_peak_gb")
        row = {"path": r["path"], "tokens": r["tokens"], "vocab": r["vocab"], "reference": reference.get(r["path"]),
               "time_ratio": tr, "mem_ratio": mr}
        if r["path"] in reference:
            if ref is not None and ref.get("status") == "OOM" and r.get("status") == "ok":
                row["meets_targets"] = "TRL OOM: ours fits where TRL does not"
            elif tr is not None:
                row["meets_targets"] = bool(tr <= 1.2 and mr <= 0.25)
        summary["issue2"].append(row)
        print(f"| {r['tokens']} x {r['vocab']} | {r['path']} | {_fmt_time(r)} | {_fmt_mem(r)} | "
              f"{_fmt_ratio(tr)} | {_fmt_ratio(mr)} |")

    nine = {r["path"]: r for r in results if r["group"] == "issue9"}
    if nine:
        chunked, floor = nine.get("trl_chunked"), nine.get("projection_floor")
        print("\n## Issue #9: from hidden states (projection included), forward + backward")
        print("| path | time | extra peak | time / TRL chunked | time / floor | mem / TRL chunked |")
        print("|---|---|---|---|---|---|")
        for path, r in nine.items():
            tc, tf = _ratio(r, chunked, "time_s"), _ratio(r, floor, "time_s")
            mc = _ratio(r, chunked, "extra_peak_gb") if path != "projection_floor" else None
            summary["issue9"].append({"path": path, "time_vs_trl_chunked": tc, "time_vs_floor": tf,
                                      "mem_vs_trl_chunked": mc})
            print(f"| {path} | {_fmt_time(r)} | {_fmt_mem(r) if path != 'projection_floor' else '(not a target)'} | "
                  f"{_fmt_ratio(tc)} | {_fmt_ratio(tf)} | {_fmt_ratio(mc)} |")
        fused = nine.get("ours_fused")
        if fused is not None and fused.get("status") == "ok":
            tc, tf, mc = (_ratio(fused, chunked, "time_s"), _ratio(fused, floor, "time_s"),
                          _ratio(fused, chunked, "extra_peak_gb"))
            summary["issue9_targets"] = {
                "fused_time_le_0.6x_trl_chunked": None if tc is None else bool(tc <= 0.6),
                "fused_time_le_1.6x_floor": None if tf is None else bool(tf <= 1.6),
                "fused_mem_le_trl_chunked": None if mc is None else bool(mc <= 1.0),
            }
            print(f"\nfused-loss targets: {summary['issue9_targets']}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of path names to run")
    parser.add_argument("--group", default=None, choices=["issue2", "issue9"])
    parser.add_argument("--logit-shapes", default=None, help="logits-path shapes, e.g. 2048x32000,4096x151936")
    parser.add_argument("--chunk-size", type=int, default=None, help="override our chunk size")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="address-space cap per CPU case (default: 80%% of MemAvailable)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.mem_limit_gb is None:
        args.mem_limit_gb = _default_mem_limit_gb()

    if args.worker:
        result = worker(json.loads(args.worker), args.device, args.dtype, args.chunk_size, args.mem_limit_gb)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    cases = build_cases(args.quick, args.logit_shapes)
    if args.group:
        cases = [c for c in cases if c["group"] == args.group]
    if args.only:
        keys = args.only.split(",")
        cases = [c for c in cases if any(k in c["path"] for k in keys)]
    results = []
    partial = Path(args.out).with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    for case in cases:
        r = run_in_subprocess(case, args)
        print(f"{case['group']} {case['path']} {case['tokens']}x{case['vocab']}: {_fmt_time(r)}, {_fmt_mem(r)}"
              + (f" ({r.get('error')})" if r.get("status") != "ok" else ""), flush=True)
        results.append(r)
        partial.write_text(json.dumps({"partial": True, "results": results}, indent=2) + "\n")  # survives a kill
    summary = summarize(results)
    import torch

    payload = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
                    "mem_limit_gb_per_case": args.mem_limit_gb if args.device == "cpu" else None},
        "quick": args.quick,
        "note": "one forward+backward per case, each in a fresh process with MALLOC_MMAP_THRESHOLD_=131072; "
                "extra peak = RSS high-water minus RSS after inputs (CPU) or max_memory_allocated minus "
                "allocated after inputs (CUDA). The machine is shared: compare ratios from one run.",
        "results": results,
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    print(f"\nwrote {out}")
    return 0


def _default_mem_limit_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return round(0.8 * info["MemAvailable"] / 2**20, 1)
    except (OSError, KeyError, ValueError):
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
