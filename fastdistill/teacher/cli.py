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
    cache_dir: null                 # default <output.path>.cache: results are kept as they arrive,
                                    # so a rerun resumes from them; false: no cache
    on_error: skip                  # skip (report failed rows) | raise

Relative paths are relative to the config file. The whole config is checked before any work
(unknown keys with the closest valid name, types, ranges), and a server teacher is probed with one
request first: an unreachable URL fails at once, naming the URL. Output files are written to a
temporary file and renamed; when rows fail and an output file already exists, it is kept and the
new result goes to ``<output>.partial<suffix>`` instead. Exit status: 0 every row annotated, 1
some rows failed (the summary lists them with reasons), 2 bad config/input or unreachable server.
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
_TEACHER_KEYS = {"model", "server", "tokenizer", "device"}
_SERVER_KEYS = {
    "base_url", "model", "api_key", "api_key_env", "max_concurrency", "max_retries", "timeout", "backoff",
    "max_backoff", "send_token_ids", "return_tokens_as_token_ids", "scoring_max_tokens", "extra_body",
}


from fastdistill.validation import ConfigError, Problems, UserError  # noqa: E402  (ConfigError re-exported)


def validate_config(config, source: str | None = None) -> None:
    """Check a whole annotate config before any work; one :class:`ConfigError` lists every problem."""
    p = Problems(source)
    if not isinstance(config, dict):
        p.add("", f"the config must be a mapping, got {type(config).__name__}")
        p.raise_if_any()
    p.keys(config, _TOP_LEVEL, "", required=("input", "output", "teacher"))
    for section in ("input", "output"):
        if section in config and p.keys(config[section], {"path"}, section, required=("path",)):
            p.type(config[section].get("path"), f"{section}.path", str, what="a path")
    out = (config.get("output") or {}).get("path") if isinstance(config.get("output"), dict) else None
    if isinstance(out, str) and Path(out).suffix not in (".jsonl", ".parquet"):
        p.add("output.path", f"{out} must end in .jsonl or .parquet")
    teacher = config.get("teacher")
    if "teacher" in config and p.keys(teacher, _TEACHER_KEYS, "teacher"):
        if ("model" in teacher) == ("server" in teacher):
            p.add("teacher", "give exactly one of 'model' (local) or 'server'")
        p.type(teacher.get("model"), "teacher.model", str, optional=True, what="a path or model name")
        p.type(teacher.get("tokenizer"), "teacher.tokenizer", str, optional=True, what="a path or tokenizer name")
        server = teacher.get("server")
        if "server" in teacher and p.keys(server, _SERVER_KEYS, "teacher.server", required=("base_url", "model")):
            url = server.get("base_url")
            if "base_url" in server and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
                p.add("teacher.server.base_url", f"expected an http:// or https:// URL, got {url!r}")
            p.type(server.get("model"), "teacher.server.model", str, optional=True)
            p.number(server.get("max_concurrency"), "teacher.server.max_concurrency", minimum=1, integer=True, optional=True)
            p.number(server.get("max_retries"), "teacher.server.max_retries", minimum=0, integer=True, optional=True)
            p.number(server.get("timeout"), "teacher.server.timeout", minimum=0, exclusive_minimum=True, optional=True)
            p.number(server.get("backoff"), "teacher.server.backoff", minimum=0, optional=True)
            p.number(server.get("max_backoff"), "teacher.server.max_backoff", minimum=0, optional=True)
            p.number(server.get("scoring_max_tokens"), "teacher.server.scoring_max_tokens", minimum=0, integer=True,
                     optional=True)
            for flag in ("send_token_ids", "return_tokens_as_token_ids"):
                p.type(server.get(flag), f"teacher.server.{flag}", bool, optional=True)
            p.type(server.get("extra_body"), "teacher.server.extra_body", dict, optional=True, what="a mapping")
            if "tokenizer" not in teacher:
                p.add("teacher.tokenizer", "required with a server (the tokenizer the server model shares with the student)")
    p.type(config.get("student_tokenizer"), "student_tokenizer", str, optional=True, what="a path or tokenizer name")
    p.type(config.get("prompt_column"), "prompt_column", str, optional=True)
    p.type(config.get("completion_column"), "completion_column", str, optional=True)
    p.number(config.get("num_samples"), "num_samples", minimum=1, integer=True, optional=True)
    p.number(config.get("top_k"), "top_k", minimum=0, integer=True, optional=True)
    p.number(config.get("max_new_tokens"), "max_new_tokens", minimum=1, integer=True, optional=True)
    p.number(config.get("temperature"), "temperature", minimum=0, optional=True)
    p.number(config.get("batch_size"), "batch_size", minimum=1, integer=True, optional=True)
    p.number(config.get("seed"), "seed", integer=True, optional=True)
    cache = config.get("cache_dir")
    if cache is not None and cache is not False and not isinstance(cache, str):
        p.add("cache_dir", f"expected a path, null (default: next to the output) or false (no cache), got {cache!r}")
    p.choice(config.get("on_error", "skip"), "on_error", ("skip", "raise"))
    p.raise_if_any()


def probe_server(base_url: str, *, timeout: float = 5.0, api_key: str | None = None) -> None:
    """One GET of ``{base_url}/models``: any HTTP answer means the server is there.

    Raises :class:`~fastdistill.validation.UserError` naming the URL when nothing answers
    (connection refused, unknown host, timeout), so a dead server fails the run at once instead of
    after every row's retries.
    """
    import urllib.error
    import urllib.request

    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (401, 404, 501 ...): reachable; real requests will say more
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"teacher.server.base_url: cannot reach the teacher server at {base_url} ({reason}); "
                        "is it running, and is the URL right (it usually ends in /v1)?") from None


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
    from fastdistill.files import load_dataset_file

    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise ConfigError(f"input.path: {path} is neither .jsonl/.json nor .parquet")
    return load_dataset_file(path, where="input.path")


def _write_dataset(ds, path: Path) -> None:
    """Write ``ds`` atomically (:func:`fastdistill.files.atomic_path`): a failed write keeps the old file."""
    from fastdistill.files import atomic_open, atomic_path

    if path.suffix == ".jsonl":
        with atomic_open(path) as handle:
            for row in ds:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        with atomic_path(path) as tmp:
            ds.to_parquet(str(tmp))
    else:
        raise ConfigError(f"output.path: {path} must end in .jsonl or .parquet")


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

    validate_config(config)
    input_path = _path((config["input"] or {}).get("path"), base, "input.path")
    output_path = _path((config["output"] or {}).get("path"), base, "output.path")
    server = config["teacher"].get("server")
    if server is not None:  # one request before any work: a dead server fails now, naming its URL
        probe_server(server["base_url"], timeout=min(5.0, float(server.get("timeout", 5.0))))
    ds = _load_dataset(input_path)
    teacher = _build_teacher(config["teacher"], base)
    student_tokenizer = None
    if config.get("student_tokenizer"):
        student_tokenizer = AutoTokenizer.from_pretrained(_maybe_local(config["student_tokenizer"], base))
    if config.get("cache_dir") is False:
        cache_dir = None
    elif config.get("cache_dir"):
        cache_dir = _path(config["cache_dir"], base, "cache_dir")
    else:  # default: resume from what an earlier run of this output already got from the teacher
        cache_dir = output_path.with_name(output_path.name + ".cache")
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
    from fastdistill.files import write_json_atomic

    written = output_path
    if report.failures and output_path.exists():
        # never replace a good earlier output with a run that lost rows: write next to it
        written = output_path.with_name(f"{output_path.stem}.partial{output_path.suffix}")
        logger.warning("%d rows failed; keeping the existing %s and writing this run's rows to %s",
                       len(report.failures), output_path, written)
    if report.rows_out == 0 and report.rows_in > 0:
        written = None
        logger.error("no row was annotated; nothing written (an existing %s is left as it was)", output_path)
    else:
        _write_dataset(out, written)
    summary = {"input": str(input_path), "output": str(written) if written else None,
               "cache_dir": str(cache_dir) if cache_dir else None, **report.as_dict()}
    if hasattr(teacher, "requests_sent"):
        summary["http_requests"] = teacher.requests_sent
    summary_path = output_path.with_name(output_path.name + ".summary.json")
    write_json_atomic(summary_path, summary)
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
    lines.append(f"output         {summary['output'] or 'none written (no row annotated)'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, command: str = "annotate") -> int:
    """Entry point of ``fastdistill annotate``; returns the exit status (errors: see :func:`fastdistill.cli.guarded`)."""
    from fastdistill.cli import guarded

    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description="Add teacher completions / log-probs to a dataset.")
    parser.add_argument("--config", required=True, help="YAML config (see fastdistill.teacher.cli)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    return guarded(command, lambda: _main(args), debug=args.debug or None)


def _main(args) -> int:
    import yaml

    config_path = Path(args.config)
    if not config_path.is_file():
        raise ConfigError(f"--config: {config_path} does not exist")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{config_path}: not valid YAML: {err}") from None
    try:
        validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{config_path}: {err}") from None
    code, summary = run_annotate(config, config_path.resolve().parent, progress=not args.no_progress)
    sys.stdout.write(_format_summary(summary) + "\n")
    return code
