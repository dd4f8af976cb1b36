"""``fastdistill curate --config curate.yaml``: run a declared list of curation steps.

Config (YAML)::

    input:
      path: data.jsonl          # .jsonl/.json, .parquet, or a directory saved by Dataset.save_to_disk
      format: auto              # auto | jsonl | parquet | datasets
      split: train              # for a saved DatasetDict
    output:
      dir: out                  # curated data + manifest.json, quality_report.json/.md, timing_report.json
      format: jsonl             # jsonl | parquet
    num_proc: null              # default for the steps that take num_proc
    steps:                      # in order; each item is {step_name: {params}} (or {step: name, ...params})
      - compute_hash: {columns: [question, gold_sql]}
      - deduplicate: {column: hash}
      - sqlite_exec_eval: {db_root: dbs, timeout_s: 2}
      - score_from_exec_eval: {}
      - keep_by_score: {min_score: 1.0}
    gate:                       # thresholds for quality_gate (min_/max_ + metric of the quality report)
      min_rows_out: 3

Relative paths (``input.path``, ``output.dir``, a step's ``db_root``) are relative to the config
file. Quality rates are measured on the data entering the first ``keep_by_score`` step (or the
output when there is none). Exit status: 0 gate passed, 1 gate failed, 2 bad config or input.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def _steps():
    from fastdistill import curation as c

    return {
        "canonicalize": c.canonicalize,
        "compute_hash": c.compute_hash,
        "deduplicate": c.deduplicate,
        "rule_filter": c.rule_filter,
        "clean_sql_output": c.clean_sql_output,
        "sqlite_exec_eval": c.sqlite_exec_eval,
        "tests_exec_eval": c.tests_exec_eval,
        "score_from_exec_eval": c.score_from_exec_eval,
        "keep_by_score": c.keep_by_score,
    }


from fastdistill.validation import ConfigError, Problems, closest  # noqa: E402  (ConfigError re-exported)

# step -> the column holding each row's own error value (counted in the step record and the log)
_ERROR_COLUMNS = {"sqlite_exec_eval": "exec_error", "tests_exec_eval": "tests_error"}
_TOP_LEVEL = ("input", "output", "num_proc", "steps", "gate")
_INPUT_KEYS = ("path", "format", "split")
_OUTPUT_KEYS = ("dir", "format")


def load_input(spec: dict, base: Path):
    """Load the input described by ``spec`` as a ``datasets.Dataset`` (errors name the field and file)."""
    import datasets

    from fastdistill.files import load_dataset_file

    if "path" not in spec:
        raise ConfigError("input.path is required")
    path = Path(spec["path"])
    path = path if path.is_absolute() else base / path
    fmt = spec.get("format", "auto")
    if fmt not in ("auto", "jsonl", "parquet", "datasets"):
        raise ConfigError(f"input.format: unknown format {fmt!r} (auto, jsonl, parquet, datasets)")
    loaded = load_dataset_file(path, fmt, where="input.path")
    if isinstance(loaded, datasets.DatasetDict):
        split = spec.get("split", "train")
        if split not in loaded:
            raise ConfigError(f"input.split: {split!r} not in {list(loaded)}{closest(split, loaded)}")
        loaded = loaded[split]
    return loaded, str(path)


def _parse_step(item, i: int) -> tuple[str, dict]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and "step" in item:
        params = {k: v for k, v in item.items() if k != "step"}
        return item["step"], params
    if isinstance(item, dict) and len(item) == 1:
        name, params = next(iter(item.items()))
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise ConfigError(f"steps[{i}] ({name}): parameters must be a mapping, got {type(params).__name__}")
        return name, dict(params)
    raise ConfigError(f"steps[{i}]: expected {{name: {{params}}}} or {{step: name, ...}}, got {item!r}")


def validate_config(config, source: str | None = None) -> list[tuple[str, dict]]:
    """Check a whole curate config before any work; returns the parsed steps.

    Raises one :class:`ConfigError` listing every problem: unknown keys at any level (with the
    closest valid name), unknown steps and step parameters, parameter types and ranges (see
    :mod:`fastdistill.curation._params`), gate thresholds (known metrics, finite numbers).
    """
    import inspect

    from fastdistill.curation._params import step_problems
    from fastdistill.curation.reports import gate_problems

    p = Problems(source)
    if not isinstance(config, dict):
        p.add("", f"the config must be a mapping of {', '.join(_TOP_LEVEL)}, got {type(config).__name__}")
        p.raise_if_any()
    p.keys(config, _TOP_LEVEL, "", required=("input", "steps"))
    if "input" in config:
        p.keys(config["input"], _INPUT_KEYS, "input", required=("path",))
        if isinstance(config["input"], dict):
            p.type(config["input"].get("path"), "input.path", str, what="a path")
            p.choice(config["input"].get("format", "auto"), "input.format", ("auto", "jsonl", "parquet", "datasets"))
    if config.get("output") is not None:
        p.keys(config["output"], _OUTPUT_KEYS, "output")
        if isinstance(config["output"], dict):
            p.type(config["output"].get("dir", "curated"), "output.dir", str, what="a path")
            p.choice(config["output"].get("format", "jsonl"), "output.format", ("jsonl", "parquet"))
    p.number(config.get("num_proc"), "num_proc", minimum=1, integer=True, optional=True)
    gate_problems(config.get("gate"), "gate", p)
    registry = _steps()
    steps: list[tuple[str, dict]] = []
    raw_steps = config.get("steps")
    if "steps" in config and (not isinstance(raw_steps, list) or not raw_steps):
        p.add("steps", "a non-empty list of steps is required")
    for i, item in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        try:
            name, params = _parse_step(item, i)
        except ConfigError as err:
            p.add("", str(err))
            continue
        steps.append((name, params))
        if name not in registry:
            p.add(f"steps[{i}]", f"unknown step {name!r}{closest(name, registry)}; known steps: {', '.join(sorted(registry))}")
            continue
        signature = inspect.signature(registry[name]).parameters
        allowed = [q for q in signature if q != "ds"]
        for q in allowed:
            if signature[q].default is inspect.Parameter.empty and q not in params:
                p.add(f"steps[{i}].{q}", f"required by {name}")
        for q in params:
            if q not in allowed:
                p.add(f"steps[{i}].{q}", f"unknown parameter of {name}{closest(q, allowed)}; valid: {', '.join(allowed)}")
        if "predicate" in params:
            p.add(f"steps[{i}].predicate", "a Python callable cannot be given in YAML; use regex/parses_as, or call "
                                           "rule_filter from Python")
        step_problems({k: v for k, v in params.items() if k in allowed and k != "predicate"}, f"steps[{i}]", p)
    p.raise_if_any()
    return steps


def run_pipeline(config: dict, base: Path, engine: str = "datasets") -> tuple[int, dict]:
    """Run a parsed config; returns ``(exit_code, summary)``. Used by :func:`main` and tests.

    ``engine="ray"`` runs the same steps on Ray Data (:mod:`fastdistill.curation.ray`); the output,
    manifest and reports are written by the same code from the result.
    """
    from tqdm.auto import tqdm

    from fastdistill.curation.reports import quality_gate, quality_report, timing_report, write_manifest
    from fastdistill.files import atomic_path, write_json_atomic

    registry = _steps()
    steps = validate_config(config)
    out_spec = config.get("output") or {}
    out_dir = Path(out_spec.get("dir", "curated"))
    out_dir = out_dir if out_dir.is_absolute() else base / out_dir
    out_fmt = out_spec.get("format", "jsonl")
    default_num_proc = config.get("num_proc")

    ds, source = load_input(config.get("input") or {}, base)
    input_ds = ds
    if engine not in ("datasets", "ray"):
        raise ConfigError(f"engine: {engine!r} (datasets or ray)")
    ray_engine = None
    if engine == "ray":
        from fastdistill.curation.ray import RayEngine

        ray_engine = RayEngine()
        registry = RayEngine.steps
        ds = ray_engine.prepare(ds)
    logger.info("curate: %d rows from %s, %d steps", len(ds), source, len(steps))
    records, evaluated = [], None
    for i, (name, params) in enumerate(tqdm(steps, desc="curate", unit="step")):
        fn = registry[name]
        call = dict(params)
        if "db_root" in call and call["db_root"] and not Path(call["db_root"]).is_absolute():
            call["db_root"] = str(base / call["db_root"])
        if "num_proc" in inspect.signature(fn).parameters and "num_proc" not in call and default_num_proc:
            call["num_proc"] = default_num_proc
        if name == "keep_by_score" and evaluated is None:
            evaluated = ds
        rows_in = ray_engine.length(ds) if ray_engine else len(ds)
        record = {"name": name, "params": params, "rows_in": rows_in}
        logger.info("step %d/%d %s(%s)", i + 1, len(steps), name, params)
        t0 = time.perf_counter()
        if name == "rule_filter" and call.get("mode", "drop") == "drop":
            # run in mark mode to count the reasons, then drop: nothing disappears unexplained
            reason_col = call.get("reason_column", "rule_reason")
            if ray_engine:
                marked = ray_engine.run(fn, ds, {**call, "mode": "mark"})
                reasons = ray_engine.column(marked, reason_col).to_pylist()
            else:
                marked = fn(ds, **{**call, "mode": "mark"})
                from fastdistill.curation._ds import arrow_column

                reasons = arrow_column(marked, reason_col).to_pylist()
            record["reasons"] = {r: reasons.count(r) for r in sorted(set(reasons) - {None})}
            if ray_engine:
                ds = ray_engine.drop_marked(marked, reason_col)
            else:
                keep = [j for j, r in enumerate(reasons) if r is None]
                ds = marked.remove_columns(reason_col)
                ds = ds if len(keep) == len(ds) else ds.select(keep)
        else:
            ds = ray_engine.run(fn, ds, call) if ray_engine else fn(ds, **call)
        record["time_s"] = time.perf_counter() - t0
        record["rows_out"] = ray_engine.length(ds) if ray_engine else len(ds)
        error_column = _ERROR_COLUMNS.get(name)
        if error_column and not ray_engine and error_column in ds.column_names and len(ds):
            from fastdistill.curation._ds import arrow_column

            errors = [e for e in arrow_column(ds, error_column).to_pylist() if e is not None]
            record["row_errors"] = {e: errors.count(e) for e in sorted(set(errors))}
            if errors:
                logger.warning("step %s: %d of %d rows got an error value in %r: %s", name, len(errors), len(ds),
                               error_column, record["row_errors"])
        records.append(record)
        logger.info("step %s: %d -> %d rows in %.2fs", name, rows_in, len(ds), record["time_s"])

    if ray_engine:  # back to a datasets.Dataset (index order): output, manifest and reports by the same code
        ds = ray_engine.finish(ds)
        evaluated = None if evaluated is None else ray_engine.finish(evaluated)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / f"curated.{out_fmt}"
    with atomic_path(data_path) as tmp:  # a failed write leaves the previous output as it was
        if out_fmt == "jsonl":
            ds.to_json(str(tmp), lines=True, force_ascii=False)
        else:
            ds.to_parquet(str(tmp))
    write_manifest(out_dir, input_ds=input_ds, output_ds=ds, steps=records, input_source=source, config=config)
    report = quality_report(ds, steps=records, input_rows=len(input_ds), out_dir=out_dir, evaluated_ds=evaluated)
    timing_report(records, out_dir=out_dir)
    gate = quality_gate(report, config.get("gate") or {})
    summary = {"output": str(data_path), "rows_in": len(input_ds), "rows_out": len(ds), "gate_passed": gate.passed,
               "gate_failures": gate.failures, "metrics": report["metrics"]}
    write_json_atomic(out_dir / "gate.json", {"passed": gate.passed, "failures": gate.failures,
                                              "checked": gate.checked}, default=str)
    return (0 if gate.passed else 1), summary


def main(argv: list[str] | None = None, command: str = "curate") -> int:
    """Entry point of ``fastdistill curate``; returns the exit status (errors: see :func:`fastdistill.cli.guarded`)."""
    from fastdistill.cli import guarded

    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file declaring input, steps, output and gate")
    parser.add_argument("--output-dir", default=None, help="override output.dir")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--engine", choices=("datasets", "ray"), default="datasets",
                        help="datasets (one machine) or ray (Ray Data: `pip install 'fastdistill[ray]'`; connects to "
                             "the cluster in RAY_ADDRESS, else starts a local Ray)")
    args = parser.parse_args(argv)
    return guarded(command, lambda: _main(args, command), debug=args.debug or None)


def _main(args, command: str) -> int:
    import yaml

    cfg_path = Path(args.config)
    if not cfg_path.is_file():
        raise ConfigError(f"--config: {cfg_path} does not exist")
    try:
        config = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{cfg_path}: not valid YAML: {err}") from None
    try:
        validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{cfg_path}: {err}") from None
    if args.output_dir:
        config.setdefault("output", {})
        if config["output"] is None:
            config["output"] = {}
        config["output"]["dir"] = str(Path(args.output_dir).resolve())
    code, summary = run_pipeline(config, cfg_path.resolve().parent, engine=args.engine)
    state = "PASSED" if code == 0 else "FAILED"
    logger.info("curate: %d -> %d rows, gate %s %s", summary["rows_in"], summary["rows_out"], state,
                summary["gate_failures"] or "")
    sys.stderr.write(f"fastdistill {command}: {summary['rows_in']} -> {summary['rows_out']} rows written to "
                     f"{summary['output']}; quality gate {state}"
                     + ("".join(f"\n  - {f}" for f in summary["gate_failures"])) + "\n")
    return code
