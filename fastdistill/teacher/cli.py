"""``fastdistill annotate --config annotate.yaml``: add teacher completions / log-probs to a dataset file.

Config (YAML)::

    input:
      path: data.jsonl             # .jsonl / .json or .parquet
    output:
      path: annotated.jsonl        # .jsonl or .parquet; a summary goes to <path>.summary.json
    teacher:                       # exactly one of model / server
      model: path/to/teacher       # local transformers model directory
      # server:
      #   base_url: http://localhost:8000/v1
      #   model: teacher
      #   api_key_env: OPENAI_API_KEY   # read the key from this environment variable
      #   max_concurrency: 8
      #   max_retries: 5
      #   timeout: 60
      #   send_token_ids: false
      #   return_tokens_as_token_ids: false
      tokenizer: path/to/tokenizer  # default: the model directory; required with a server
      device: null                  # local only: cpu / cuda
    student_tokenizer: null         # path; must match the teacher's tokenizer
    prompt_column: prompt
    completion_column: completion   # null: sample num_samples completions per prompt
    num_samples: 1
    top_k: 0
    max_new_tokens: 256
    temperature: 1.0
    batch_size: 8
    seed: null
    cache_dir: cache                # resumable: rerun the same command after a crash
    on_error: skip                  # skip (report failed rows) | raise

Relative paths are relative to the config file. Exit status: 0 every row annotated, 1 some rows
failed (the others are written; the summary lists the failures with reasons), 2 bad config/input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["main", "run_annotate", "ConfigError"]

_TOP_LEVEL = {
    "input", "output", "teacher", "student_tokenizer", "prompt_column", "completion_column", "num_samples", "top_k",
    "max_new_tokens", "temperature", "batch_size", "seed", "cache_dir", "on_error",
}
_SERVER_KEYS = {
    "base_url", "model", "api_key", "api_key_env", "max_concurrency", "max_retries", "timeout", "backoff",
    "max_backoff", "send_token_ids", "return_tokens_as_token_ids", "scoring_max_tokens", "extra_body",
}


class ConfigError(ValueError):
    """The config file is invalid (the message names the bad field)."""


def _path(value, base: Path, field: str) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"{field}: expected a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _maybe_local(value, base: Path) -> str:
    """A relative path that exists next to the config resolves there; anything else is kept as given (a Hub name)."""
    candidate = base / str(value)
    return str(candidate) if not Path(str(value)).is_absolute() and candidate.exists() else str(value)


def _load_dataset(path: Path):
    import datasets

    if not path.exists():
        raise ConfigError(f"input.path: {path} does not exist")
    if path.suffix in (".jsonl", ".json"):
        return datasets.Dataset.from_json(str(path))
    if path.suffix == ".parquet":
        return datasets.Dataset.from_parquet(str(path))
    raise ConfigError(f"input.path: {path} is neither .jsonl/.json nor .parquet")


def _write_dataset(ds, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in ds:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        ds.to_parquet(str(tmp))
    else:
        raise ConfigError(f"output.path: {path} must end in .jsonl or .parquet")
    os.replace(tmp, path)


def _build_teacher(spec: dict, base: Path):
    from transformers import AutoTokenizer

    from fastdistill.teacher.local import LocalTeacher
    from fastdistill.teacher.server import OpenAIServerTeacher

    if not isinstance(spec, dict):
        raise ConfigError("teacher: expected a mapping with 'model' or 'server'")
    unknown = set(spec) - {"model", "server", "tokenizer", "device"}
    if unknown:
        raise ConfigError(f"teacher: unknown keys {sorted(unknown)}")
    if ("model" in spec) == ("server" in spec):
        raise ConfigError("teacher: give exactly one of 'model' (local) or 'server'")
    tokenizer_path = spec.get("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(_maybe_local(tokenizer_path, base)) if tokenizer_path else None
    if "model" in spec:
        return LocalTeacher(_maybe_local(spec["model"], base), tokenizer=tokenizer, device=spec.get("device"))
    server = spec["server"]
    if not isinstance(server, dict) or "base_url" not in server or "model" not in server:
        raise ConfigError("teacher.server: needs base_url and model")
    unknown = set(server) - _SERVER_KEYS
    if unknown:
        raise ConfigError(f"teacher.server: unknown keys {sorted(unknown)}")
    if tokenizer is None:
        raise ConfigError("teacher.tokenizer: required with a server (the tokenizer the server model shares with the student)")
    kwargs = {k: v for k, v in server.items() if k not in ("api_key_env",)}
    if "api_key_env" in server:
        if server["api_key_env"] not in os.environ:
            raise ConfigError(f"teacher.server.api_key_env: environment variable {server['api_key_env']!r} is not set")
        kwargs["api_key"] = os.environ[server["api_key_env"]]
    teacher = OpenAIServerTeacher(**kwargs)
    teacher.tokenizer = tokenizer
    return teacher


def run_annotate(config: dict, base: Path, progress: bool = True) -> tuple[int, dict]:
    """Run a parsed config; returns ``(exit_code, summary)``. Used by :func:`main` and tests."""
    from transformers import AutoTokenizer

    from fastdistill.teacher.annotate import annotate

    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping")
    unknown = set(config) - _TOP_LEVEL
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)} (known: {sorted(_TOP_LEVEL)})")
    for field in ("input", "output", "teacher"):
        if field not in config:
            raise ConfigError(f"{field}: required")
    input_path = _path((config["input"] or {}).get("path"), base, "input.path")
    output_path = _path((config["output"] or {}).get("path"), base, "output.path")
    if output_path.suffix not in (".jsonl", ".parquet"):
        raise ConfigError(f"output.path: {output_path} must end in .jsonl or .parquet")
    ds = _load_dataset(input_path)
    teacher = _build_teacher(config["teacher"], base)
    student_tokenizer = None
    if config.get("student_tokenizer"):
        student_tokenizer = AutoTokenizer.from_pretrained(_maybe_local(config["student_tokenizer"], base))
    cache_dir = _path(config["cache_dir"], base, "cache_dir") if config.get("cache_dir") else None
    kwargs = {k: config[k] for k in ("prompt_column", "num_samples", "top_k", "max_new_tokens", "temperature", "batch_size", "seed") if config.get(k) is not None}
    out, report = annotate(
        ds,
        teacher,
        completion_column=config.get("completion_column"),
        cache_dir=cache_dir,
        student_tokenizer=student_tokenizer,
        on_error=config.get("on_error", "skip"),
        return_report=True,
        progress=progress,
        **kwargs,
    )
    _write_dataset(out, output_path)
    summary = {"input": str(input_path), "output": str(output_path), **report.as_dict()}
    if hasattr(teacher, "requests_sent"):
        summary["http_requests"] = teacher.requests_sent
    summary_path = output_path.with_name(output_path.name + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return (1 if report.failures else 0), summary


def _format_summary(summary: dict) -> str:
    lines = [
        f"rows in        {summary['rows_in']}",
        f"rows out       {summary['rows_out']}  ({summary['rows_cached']} from cache)",
        f"tokens         {summary['tokens']}  ({summary['tokens_scored']} scored now)",
        f"time           {summary['seconds']:.1f} s",
        f"tokens/s       {summary['tokens_per_s']:.0f}",
        f"failures       {len(summary['failures'])}",
    ]
    lines += [f"  row {f['row']}: {f['reason']}" for f in summary["failures"][:20]]
    if len(summary["failures"]) > 20:
        lines.append(f"  ... {len(summary['failures']) - 20} more in the summary file")
    lines.append(f"output         {summary['output']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, command: str = "annotate") -> int:
    """Entry point of ``fastdistill annotate``; returns the exit status."""
    import yaml

    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description="Add teacher completions / log-probs to a dataset.")
    parser.add_argument("--config", required=True, help="YAML config (see fastdistill.teacher.cli)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    config_path = Path(args.config)
    try:
        if not config_path.exists():
            raise ConfigError(f"--config: {config_path} does not exist")
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
        code, summary = run_annotate(config, config_path.resolve().parent, progress=not args.no_progress)
    except (ConfigError, yaml.YAMLError) as err:
        sys.stderr.write(f"fastdistill {command}: {err}\n")
        return 2
    sys.stdout.write(_format_summary(summary) + "\n")
    return code
