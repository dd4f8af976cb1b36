"""``fastdistill generate`` (batch inference to JSONL) and ``fastdistill eval`` (kill rate, pass rate, speed).

Examples::

    fastdistill generate --model out/student --dataset examples:held_out --out gen.jsonl --temperature 0.7
    fastdistill eval --generations gen.jsonl --metrics mutation,speed --out eval.json
    fastdistill eval --model out/student --dataset my_code.jsonl

``--dataset`` is a JSON/JSONL file of rows with a ``code`` column (``prompt`` and ``name`` optional)
or ``examples``, ``examples:train``, ``examples:held_out`` for the bundled examples.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

logger = logging.getLogger(__name__)


def _dataset(spec: str):
    if spec.startswith("examples"):
        from fastdistill.data.examples import load_examples, split_examples

        _, _, split = spec.partition(":")
        if split in ("", "all"):
            return load_examples()
        if split not in ("train", "held_out"):
            raise ValueError(f"unknown examples split {split!r}; use examples, examples:train or examples:held_out")
        train, held_out = split_examples()
        return train if split == "train" else held_out
    return spec


def _add_generation_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("generation")
    g.add_argument("--model", help="model directory or Hub id (with its tokenizer)")
    g.add_argument("--dataset", help="JSON/JSONL with a 'code' column, or examples[:train|:held_out]")
    g.add_argument("--code-column", default="code")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--num-samples", type=int, default=1, help="completions per row (needs temperature > 0)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--seed", type=int, default=0)


_SANDBOX_FLAGS = ("test_timeout_s", "baseline_timeout_s", "pair_timeout_s", "mutant_timeout_factor",
                  "mutant_timeout_min_s", "mutant_cpu_min_s", "memory_mb", "max_processes", "seed")


def _add_sandbox_args(parser: argparse.ArgumentParser) -> None:
    from dataclasses import fields

    from fastdistill.rewards.settings import SandboxSettings

    g = parser.add_argument_group("sandbox", "test sandbox settings (fastdistill.rewards.SandboxSettings)")
    g.add_argument("--sandbox", default=None, metavar="JSON",
                   help='all sandbox settings as a JSON object, e.g. \'{"memory_mb": 512}\' (flags below win)')
    for f in fields(SandboxSettings):
        if f.name in _SANDBOX_FLAGS:
            g.add_argument("--sandbox-" + f.name.replace("_", "-"), dest="sandbox_" + f.name, default=None,
                           type=int if f.type in ("int", int) else float,
                           help=f"{f.metadata.get('help', '')} (default: {f.default})")


def _sandbox_settings(args):
    from fastdistill.rewards.settings import SandboxSettings

    settings = SandboxSettings.coerce(args.sandbox)
    return settings.replace(workers=args.workers, max_mutants=args.max_mutants,
                            **{name: getattr(args, "sandbox_" + name) for name in _SANDBOX_FLAGS})


def _settings(args):
    from fastdistill.evaluation.generation import GenerationSettings

    return GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, num_samples=args.num_samples, batch_size=args.batch_size,
                              seed=args.seed)


def _summary(result: dict, keys) -> dict:
    return {k: result[k] for k in keys if k in result}


def main(argv: list[str] | None = None, command: str = "eval") -> int:
    """Entry point of ``fastdistill eval`` and ``fastdistill generate``; returns the exit status."""
    if command not in ("eval", "generate"):
        raise ValueError(f"unknown evaluation command {command!r}")
    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    _add_generation_args(parser)
    if command == "generate":
        parser.add_argument("--out", required=True, help="output JSONL (one row per completion)")
    else:
        parser.add_argument("--generations", help="score this JSONL from `fastdistill generate` instead of generating")
        parser.add_argument("--metrics", default="mutation,speed", help="comma list of: mutation, speed")
        parser.add_argument("--max-mutants", type=int, default=None,
                            help="mutants per code under test (default: SandboxSettings.max_mutants)")
        parser.add_argument("--repeats", type=int, default=5, help="test runs per file for speed/stability")
        parser.add_argument("--workers", type=int, default=None, help="parallel sandboxes (default: CPU count)")
        _add_sandbox_args(parser)
        parser.add_argument("--out", help="write the full result (headlines + per-example rows) as JSON")
        parser.add_argument("--save-generations", help="also write the generated completions as JSONL")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    from fastdistill.cli import guarded

    return guarded(command, lambda: _run(parser, args, command), debug=args.debug or None)


def _check_args(args, command: str) -> None:
    """Every bad number on the command line at once, before any model is loaded."""
    from fastdistill.validation import Problems

    p = Problems()
    p.number(args.max_new_tokens, "--max-new-tokens", minimum=1, integer=True)
    p.number(args.temperature, "--temperature", minimum=0)
    p.number(args.top_p, "--top-p", minimum=0, exclusive_minimum=True, maximum=1)
    p.number(args.top_k, "--top-k", minimum=0, integer=True)
    p.number(args.num_samples, "--num-samples", minimum=1, integer=True)
    p.number(args.batch_size, "--batch-size", minimum=1, integer=True)
    if command == "eval":
        p.number(args.max_mutants, "--max-mutants", minimum=1, integer=True, optional=True)
        p.number(args.repeats, "--repeats", minimum=1, integer=True)
        p.number(args.workers, "--workers", minimum=1, integer=True, optional=True)
    p.raise_if_any()


def _run(parser, args, command: str) -> int:
    from fastdistill.files import write_json_atomic

    _check_args(args, command)
    if command == "generate":
        if not args.model or not args.dataset:
            parser.error("generate needs --model and --dataset")
        from fastdistill.evaluation.generation import generate

        rows = generate(args.model, _dataset(args.dataset), args.out, settings=_settings(args),
                        code_column=args.code_column)
        sys.stderr.write(f"fastdistill generate: {len(rows)} completions written to {args.out}\n")
        return 0

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = set(metrics) - {"mutation", "speed"}
    if unknown or not metrics:
        parser.error(f"--metrics takes mutation and/or speed, got {args.metrics!r}")
    from fastdistill.evaluation.generation import generate, read_jsonl, write_jsonl
    from fastdistill.evaluation.metrics import check_generation_rows, score_mutation, score_speed

    if args.generations:
        generations = read_jsonl(args.generations)
        check_generation_rows(generations, args.generations)
    elif args.model and args.dataset:
        generations = generate(args.model, _dataset(args.dataset), settings=_settings(args),
                               code_column=args.code_column)
        if args.save_generations:
            write_jsonl(generations, args.save_generations)
    else:
        parser.error("eval needs --generations, or --model and --dataset")
    sandbox = _sandbox_settings(args)
    result: dict = {"n": len(generations), "sandbox": sandbox.to_dict()}
    if "mutation" in metrics:
        result["mutation"] = score_mutation(generations, sandbox=sandbox)
    if "speed" in metrics:
        result["speed"] = score_speed(generations, repeats=args.repeats, sandbox=sandbox)

    if args.out:
        write_json_atomic(args.out, result)
    summary = {"n": result["n"]}
    if "mutation" in result:
        summary["mutation"] = _summary(result["mutation"], ("kill_rate", "pass_rate", "extract_rate"))
    if "speed" in result:
        summary["speed"] = _summary(result["speed"], ("runtime_s", "cv", "stable_rate", "n_timed"))
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0
