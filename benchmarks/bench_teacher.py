"""Throughput of local teacher-forced scoring: completion tokens/s at two batch sizes.

The teacher is a tiny-but-not-trivial Qwen2 from ``fastdistill.testing.tiny_causal_lm`` (hidden
256, 4 layers, 8 heads, vocab of the 512-token offline tokenizer) scoring rows of varied length
(prompts of ~40-250 tokens, completions of ~30-300 tokens) through ``fastdistill.teacher.annotate``
end to end (tokenization, length-sorted batching, one forward per batch, gather + top-k). Each
setting runs once to warm up, then ``--repeats`` times; the table shows the median.

Usage::

    python benchmarks/bench_teacher.py                  # 48 rows, batch sizes 1 and 16
    python benchmarks/bench_teacher.py --rows 32 --repeats 1
    python benchmarks/bench_teacher.py --batch-sizes 1 8 32 --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "bench_teacher.json"

CODE_LINES = [
    "def add(a, b):",
    "    return a + b",
    "for i in range(len(values)):",
    "    total += values[i] * 2 - 1",
    "while left < right:",
    "    mid = (left + right) // 2",
    "class Stack:",
    "    def push(self, item):",
    "        self.items.append(item)",
    "return [x for x in items if x is not None]",
]
TEST_LINES = [
    "def test_add():",
    "    assert add(1, 2) == 3",
    "@pytest.mark.parametrize('text, expected', [('racecar', True), ('abc', False)])",
    "def test_is_palindrome(text, expected):",
    "    assert is_palindrome(text) is expected",
    "    with pytest.raises(IndexError):",
    "        Stack().pop()",
]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        code = "\n".join(rng.choice(CODE_LINES) for _ in range(rng.randint(4, 30)))
        tests = "\n".join(rng.choice(TEST_LINES) for _ in range(rng.randint(3, 35)))
        rows.append(
            {
                "prompt": f"Write pytest unit tests for the following Python code.\n\n{code}",
                "completion": "import pytest\n" + tests,
            }
        )
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--top-k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from fastdistill.data import load_supervised_dataset
    from fastdistill.data.collators import completion_token_ids
    from fastdistill.teacher import LocalTeacher, annotate
    from fastdistill.testing import tiny_causal_lm

    config = dict(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4
    )
    model, tok = tiny_causal_lm(seed=0, **config)
    teacher = LocalTeacher(model, tok, device=args.device)
    ds = load_supervised_dataset(make_rows(args.rows))
    lengths = [tuple(map(len, completion_token_ids(tok, r["prompt"], r["completion"]))) for r in ds]
    completion_tokens = sum(c for _, c in lengths)
    all_tokens = sum(p + c for p, c in lengths)

    results = []
    for batch_size in args.batch_sizes:
        times = []
        for repeat in range(args.repeats + 1):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            annotate(
                ds, teacher, completion_column="completion", top_k=args.top_k, batch_size=batch_size, progress=False
            )
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if repeat > 0:  # the first run warms up
                times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        results.append(
            {
                "batch_size": batch_size,
                "seconds": seconds,
                "completion_tokens_per_s": completion_tokens / seconds,
                "all_tokens_per_s": all_tokens / seconds,
                "rows_per_s": len(ds) / seconds,
            }
        )

    base = results[0]["completion_tokens_per_s"]
    header = f"{'batch':>5} {'seconds':>8} {'compl tok/s':>12} {'all tok/s':>10} {'rows/s':>7} {'speedup':>7}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r['batch_size']:>5} {r['seconds']:>8.3f} {r['completion_tokens_per_s']:>12.0f} "
            f"{r['all_tokens_per_s']:>10.0f} {r['rows_per_s']:>7.1f} {r['completion_tokens_per_s'] / base:>6.2f}x"
        )
    print(
        f"local teacher-forced scoring: {len(ds)} rows, {completion_tokens} completion / {all_tokens} total tokens, "
        f"top_k={args.top_k}, model {config}, device {args.device}, torch threads {torch.get_num_threads()}"
    )
    print("\n".join(lines))
    payload = {
        "benchmark": "bench_teacher",
        "rows": len(ds),
        "completion_tokens": completion_tokens,
        "all_tokens": all_tokens,
        "top_k": args.top_k,
        "model": config,
        "vocab_size": len(tok),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "repeats": args.repeats,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
