"""Bounded work on bad input: test-file extraction from hostile model output, and a dead teacher server.

* extraction: ``extract_test_code`` on unfenced output (``n`` test functions followed by ``n`` prose
  lines) vs the previous implementation (trim one trailing line per parse: quadratic), same text.
* dead server: ``fastdistill annotate`` against a URL where nothing listens: wall time until the
  command gives up (now one probe request; before, every row was retried ~1.6 s).

Prints a table and writes ``benchmarks/results/bench_bad_input.json``.
Usage: ``python benchmarks/bench_bad_input.py [--sizes 250 500 1000] [--old-max 500]``
"""

import argparse
import ast
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastdistill.rewards.functions import extract_test_code

ROOT = Path(__file__).resolve().parents[1]
_CODE_START = re.compile(r"^(import |from |def |class |@|async def )")


def old_extract_unfenced(text):
    """The previous unfenced path: drop one trailing line per failed parse (the quadratic part)."""

    def parse(source):
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        return (
            tree if any(isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in ast.walk(tree)) else None
        )

    if parse(text) is not None:
        return text
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _CODE_START.match(line)]
    for end in range(len(lines), starts[0], -1):
        candidate = "\n".join(lines[starts[0] : end]) + "\n"
        if parse(candidate) is not None:
            return candidate
    return None


def hostile(n):
    return (
        "import pytest\n"
        + "".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(n))
        + "".join(f"This line {i} is prose that explains the tests above.\n" for i in range(n))
    )


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def dead_server_seconds(rows: int) -> float:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with tempfile.TemporaryDirectory() as d:
        Path(d, "data.jsonl").write_text(
            "".join(json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(rows))
        )
        Path(d, "a.yaml").write_text(
            f"input: {{path: data.jsonl}}\noutput: {{path: out.jsonl}}\ncompletion_column: completion\n"
            f"teacher: {{server: {{base_url: 'http://127.0.0.1:{port}/v1', model: t}}, tokenizer: t}}\n"
        )
        start = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from fastdistill.cli import main; "
                f"sys.exit(main(['annotate', '--config', '{d}/a.yaml', '--no-progress']))",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        elapsed = time.perf_counter() - start
        assert proc.returncode == 2 and "cannot reach" in proc.stderr, proc.stderr[-500:]
        return elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--old-max", type=int, default=500, help="largest size also run with the old (quadratic) code")
    parser.add_argument("--rows", type=int, default=20, help="rows of the dead-server annotate run")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = {"load_avg_1min": load, "extraction": [], "dead_server": {}}
    print(f"load average (1 min): {load:.1f}")
    print(f"{'n tests + n prose':>18} {'chars':>8} {'new s':>8} {'old s':>8} {'old/new':>8}")
    for n in args.sizes:
        text = hostile(n)
        t_new, out = timed(extract_test_code, text)
        assert out is not None and out.count("def test_") == n
        t_old = None
        if n <= args.old_max:
            t_old, out_old = timed(old_extract_unfenced, text)
            assert out_old.count("def test_") == n
        ratio = t_old / t_new if t_old else None
        results["extraction"].append({"n": n, "chars": len(text), "new_s": t_new, "old_s": t_old, "ratio": ratio})
        print(
            f"{n:>18} {len(text):>8} {t_new:>8.3f} {(f'{t_old:.2f}' if t_old else '-'):>8} "
            f"{(f'{ratio:.0f}x' if ratio else '-'):>8}"
        )
    secs = dead_server_seconds(args.rows)
    results["dead_server"] = {"rows": args.rows, "seconds_to_exit_2": secs, "old_estimate_s": 1.6 * args.rows}
    print(
        f"dead server, {args.rows} rows: exit 2 after {secs:.1f} s (incl. interpreter start; "
        f"before: ~1.6 s per row = ~{1.6 * args.rows:.0f} s, then an empty output)"
    )
    out = ROOT / "benchmarks" / "results" / "bench_bad_input.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
