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


class ConfigError(ValueError):
    """The config file is invalid (message names the bad field)."""


def load_input(spec: dict, base: Path):
    """Load the input described by ``spec`` as a ``datasets.Dataset``."""
    import datasets

    if "path" not in spec:
        raise ConfigError("input.path is required")
    path = Path(spec["path"])
    path = path if path.is_absolute() else base / path
    fmt = spec.get("format", "auto")
    if fmt == "auto":
        if path.is_dir():
            fmt = "datasets"
        elif path.suffix in (".jsonl", ".json"):
            fmt = "jsonl"
        elif path.suffix == ".parquet":
            fmt = "parquet"
        else:
            raise ConfigError(f"input.format: cannot infer the format of {path}; set jsonl, parquet or datasets")
    if not path.exists():
        raise ConfigError(f"input.path: {path} does not exist")
    if fmt == "jsonl":
        return datasets.Dataset.from_json(str(path)), str(path)
    if fmt == "parquet":
        return datasets.Dataset.from_parquet(str(path)), str(path)
    if fmt == "datasets":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            split = spec.get("split", "train")
            if split not in loaded:
                raise ConfigError(f"input.split: {split!r} not in {list(loaded)}")
            loaded = loaded[split]
        return loaded, str(path)
    raise ConfigError(f"input.format: unknown format {fmt!r} (jsonl, parquet, datasets)")


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


def run_pipeline(config: dict, base: Path, engine: str = "datasets") -> tuple[int, dict]:
    """Run a parsed config; returns ``(exit_code, summary)``. Used by :func:`main` and tests.

    ``engine="ray"`` runs the same steps on Ray Data (:mod:`fastdistill.curation.ray`); the output,
    manifest and reports are written by the same code from the result.
    """
    from tqdm.auto import tqdm

    from fastdistill.curation.reports import quality_gate, quality_report, timing_report, write_manifest

    registry = _steps()
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping")
    raw_steps = config.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ConfigError("steps: a non-empty list of steps is required")
    steps = [_parse_step(item, i) for i, item in enumerate(raw_steps)]
    for i, (name, params) in enumerate(steps):
        if name not in registry:
            raise ConfigError(f"steps[{i}]: unknown step {name!r} (known: {sorted(registry)})")
        sig = inspect.signature(registry[name])
        bad = [p for p in params if p not in sig.parameters or p == "ds"]
        if bad:
            raise ConfigError(f"steps[{i}] ({name}): unknown parameter(s) {bad}")
    out_spec = config.get("output") or {}
    out_dir = Path(out_spec.get("dir", "curated"))
    out_dir = out_dir if out_dir.is_absolute() else base / out_dir
    out_fmt = out_spec.get("format", "jsonl")
    if out_fmt not in ("jsonl", "parquet"):
        raise ConfigError(f"output.format: {out_fmt!r} (jsonl or parquet)")
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
    logger.info("curate: %d rows from %s, %d steps", len(input_ds), source, len(steps))
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
        records.append(record)
        logger.info("step %s: %d -> %d rows in %.2fs", name, rows_in, record["rows_out"], record["time_s"])

    if ray_engine:  # back to a datasets.Dataset (index order): output, manifest and reports by the same code
        ds = ray_engine.finish(ds)
        evaluated = None if evaluated is None else ray_engine.finish(evaluated)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir / f"curated.{out_fmt}"
    if out_fmt == "jsonl":
        ds.to_json(str(data_path), lines=True, force_ascii=False)
    else:
        ds.to_parquet(str(data_path))
    write_manifest(out_dir, input_ds=input_ds, output_ds=ds, steps=records, input_source=source, config=config)
    report = quality_report(ds, steps=records, input_rows=len(input_ds), out_dir=out_dir, evaluated_ds=evaluated)
    timing_report(records, out_dir=out_dir)
    gate = quality_gate(report, config.get("gate") or {})
    summary = {"output": str(data_path), "rows_in": len(input_ds), "rows_out": len(ds), "gate_passed": gate.passed,
               "gate_failures": gate.failures, "metrics": report["metrics"]}
    (out_dir / "gate.json").write_text(__import__("json").dumps(
        {"passed": gate.passed, "failures": gate.failures, "checked": gate.checked}, indent=2, default=str) + "\n")
    return (0 if gate.passed else 1), summary


def main(argv: list[str] | None = None, command: str = "curate") -> int:
    """Entry point of ``fastdistill curate``; returns the exit status."""
    import yaml

    parser = argparse.ArgumentParser(prog=f"fastdistill {command}", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file declaring input, steps, output and gate")
    parser.add_argument("--output-dir", default=None, help="override output.dir")
    parser.add_argument("--engine", choices=("datasets", "ray"), default="datasets",
                        help="datasets (one machine) or ray (Ray Data: `pip install 'fastdistill[ray]'`; connects to "
                             "the cluster in RAY_ADDRESS, else starts a local Ray)")
    args = parser.parse_args(argv)
    cfg_path = Path(args.config)
    try:
        config = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        if args.output_dir:
            config.setdefault("output", {})["dir"] = str(Path(args.output_dir).resolve())
        code, summary = run_pipeline(config, cfg_path.resolve().parent, engine=args.engine)
    except (ConfigError, OSError, yaml.YAMLError, KeyError, ValueError, TypeError, ImportError) as exc:
        logger.error("curate: %s", exc)
        sys.stderr.write(f"fastdistill {command}: error: {exc}\n")
        return 2
    state = "PASSED" if code == 0 else "FAILED"
    logger.info("curate: %d -> %d rows, gate %s %s", summary["rows_in"], summary["rows_out"], state,
                summary["gate_failures"] or "")
    sys.stderr.write(f"fastdistill {command}: {summary['rows_in']} -> {summary['rows_out']} rows written to "
                     f"{summary['output']}; quality gate {state}"
                     + ("".join(f"\n  - {f}" for f in summary["gate_failures"])) + "\n")
    return code
