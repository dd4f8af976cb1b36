"""On-policy GKD with the teacher in memory vs served from a separate local process (injected latency, faults).

Each case runs in a fresh Python process (``MALLOC_MMAP_THRESHOLD_=131072`` so freed buffers go back to the
OS and the RSS high-water mark reflects what the trainer held) and reports:

* peak RSS of the trainer process (``VmHWM``; the served teacher's process is not counted: that is the point),
* median optimisation-step time (first step excluded: warm-up),
* for served cases: the time the trainer blocked on the server vs the server's latency over the step
  (fraction of latency hidden = 1 - blocked / latency), failed rows, and lost steps (steps that did not complete).

Cases: ``student_only`` (the same GKD run with a negligible 1-layer teacher in memory: the memory floor),
``in_memory`` (teacher ~4x the student in the trainer), ``served`` (the same teacher behind
``fastdistill.testing.teacher_server`` in its own process, ``--latency-s`` added to every request) and
``served_faults`` (plus 10% transient failures: HTTP 500, malformed and truncated answers).

    python benchmarks/bench_served_teacher.py            # writes benchmarks/results/bench_served_teacher.json

TRL's ``ServerDistillationTrainer`` is not in the table: it talks to TRL's own ``trl vllm-serve`` endpoints
(``/get_sequence_logprobs/``), not to the OpenAI-compatible completions API that vLLM's stock server and
this local server speak, so it cannot run against the same server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's fastdistill, in this process and (PYTHONPATH) its children
STUDENT = {
    "hidden_size": 256,
    "intermediate_size": 704,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TEACHER = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
}
NEGLIGIBLE = {
    "hidden_size": 8,
    "intermediate_size": 8,
    "num_hidden_layers": 1,
    "num_attention_heads": 1,
    "num_key_value_heads": 1,
}


def rss_high_water_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_case(args) -> dict:
    """One case, in this (fresh) process."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from fastdistill import GKDConfig, GKDTrainer
    from fastdistill.data import load_supervised_dataset

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.student)
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    if args.case == "student_only":
        teacher = AutoModelForCausalLM.from_pretrained(args.negligible, dtype=torch.float32)
    elif args.case == "in_memory":
        teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
    else:
        teacher = args.url
    rows = [
        {
            "prompt": f"Write a pytest test for add({i}, {i + 1}).",
            "completion": f"def test_add():\n    assert add({i}, {i + 1}) == {2 * i + 1}",
        }
        for i in range(64)
    ]
    step_times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t)

    config = GKDConfig(
        output_dir=tempfile.mkdtemp(),
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        max_steps=args.steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=args.accumulation,
        lmbda=1.0,
        max_new_tokens=args.new_tokens,
        beta=0.5,
        seed=0,
        disable_dropout=True,
        teacher_top_k=args.top_k,
        teacher_max_failed_fraction=0.5,
        teacher_max_retries=6,
    )
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=config,
        processing_class=tok,
        train_dataset=load_supervised_dataset(rows),
        callbacks=[Clock()],
    )
    if trainer.served is not None:
        trainer.served.teacher.backoff = trainer.served.backoff = 0.05
    micro = []
    original = trainer.training_step

    def timed(*a, **k):
        t = time.perf_counter()
        out = original(*a, **k)
        micro.append(time.perf_counter() - t)
        return out

    trainer.training_step = timed
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    out = {
        "case": args.case,
        "peak_rss_mb": rss_high_water_mb(),
        "steps_done": len(step_times),
        "step_s_median": statistics.median(step_times[1:]),
        "micro_batch_train_s_median": statistics.median(micro[args.accumulation :]),
        "loss_jsd_last": logs[-1].get("loss/jsd") if logs else None,
    }
    if trainer.served is not None:
        waits = [h["teacher/wait_s"] for h in logs][1:]
        latencies = [h["teacher/latency_s"] for h in logs][1:]
        out.update(
            teacher_wait_s_mean=statistics.mean(waits),
            teacher_latency_s_mean=statistics.mean(latencies),
            latency_hidden=1.0 - sum(waits) / max(sum(latencies), 1e-9),
            failed_rows=sum(h["teacher/failed_rows"] for h in logs),
            rows_scored=trainer.served.rows_scored,
        )
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="run one case in this process (internal)")
    parser.add_argument("--student"), parser.add_argument("--teacher"), parser.add_argument("--negligible")
    parser.add_argument("--url")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--accumulation", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--latency-s", type=float, default=0.25, help="added to every teacher request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_served_teacher.json"))
    args = parser.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return

    from fastdistill.testing import save_tiny_causal_lm
    from fastdistill.testing.teacher_server import TeacherServerProcess

    work = Path(tempfile.mkdtemp(prefix="bench_served_"))
    student = save_tiny_causal_lm(work / "student", seed=0, **STUDENT)
    teacher = save_tiny_causal_lm(work / "teacher", seed=1, **TEACHER)
    negligible = save_tiny_causal_lm(work / "negligible", seed=2, **NEGLIGIBLE)

    def params(path):
        from transformers import AutoModelForCausalLM

        return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())

    sizes = {"student_params": params(student), "teacher_params": params(teacher)}
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "131072",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    common = [
        "--student",
        student,
        "--teacher",
        teacher,
        "--negligible",
        negligible,
        "--steps",
        str(args.steps),
        "--accumulation",
        str(args.accumulation),
        "--new-tokens",
        str(args.new_tokens),
        "--top-k",
        str(args.top_k),
        "--threads",
        str(args.threads),
    ]

    def child(case, url=None):
        cmd = [sys.executable, __file__, "--case", case, *common] + (["--url", url] if url else [])
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, cwd=ROOT, check=False
        )  # stderr reported below
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(line[len("RESULT ") :])
        print("case done: " + json.dumps(result), flush=True)  # kept even if a later case fails
        return result

    results = [child("student_only"), child("in_memory")]
    for case, faults in (("served", {}), ("served_faults", {"500": 0.06, "malformed": 0.02, "truncated": 0.02})):
        with TeacherServerProcess(
            teacher,
            latency_s=args.latency_s,
            fault_rates=faults,
            max_logprobs=args.top_k,
            threads=1,
            env=env,
            startup_timeout_s=900,
        ) as server:
            result = child(case, server.base_url)
            result["fault_rate"] = sum(faults.values())
            results.append(result)
    by = {r["case"]: r for r in results}
    floor, memory = by["student_only"], by["in_memory"]
    for r in results:
        r["rss_vs_student_only"] = r["peak_rss_mb"] / floor["peak_rss_mb"]
        r["step_vs_in_memory"] = r["step_s_median"] / memory["step_s_median"]
        r["lost_steps"] = args.steps - r["steps_done"]
    load = os.getloadavg()
    report = {
        "benchmark": "served_teacher",
        "load_avg": load,
        "cpu_count": os.cpu_count(),
        **sizes,
        "latency_s": args.latency_s,
        "steps": args.steps,
        "accumulation": args.accumulation,
        "top_k": args.top_k,
        "results": results,
    }
    print(
        f"student {sizes['student_params'] / 1e6:.1f}M params, teacher {sizes['teacher_params'] / 1e6:.1f}M "
        f"({sizes['teacher_params'] / sizes['student_params']:.1f}x); injected latency {args.latency_s}s; load {load}"
    )
    print(
        f"{'case':<15}{'peak RSS MB':>12}{'vs student':>11}{'step s':>8}{'vs in-mem':>10}{'micro fwd+bwd s':>16}"
        f"{'hidden':>8}{'failed rows':>12}{'lost steps':>11}"
    )
    for r in results:
        hidden = f"{r['latency_hidden']:.0%}" if "latency_hidden" in r else "-"
        print(
            f"{r['case']:<15}{r['peak_rss_mb']:>12.0f}{r['rss_vs_student_only']:>11.2f}{r['step_s_median']:>8.2f}"
            f"{r['step_vs_in_memory']:>10.2f}{r['micro_batch_train_s_median']:>16.2f}{hidden:>8}"
            f"{r.get('failed_rows', 0):>12.0f}{r['lost_steps']:>11}"
        )
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
