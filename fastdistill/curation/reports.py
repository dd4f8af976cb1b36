"""Audit and quality reports: manifest.json, quality_report.json (+ .md), timing_report.json, gate.

A *step record* (what the ``curate`` runner collects, and what users may build themselves) is a
dict ``{"name", "params", "rows_in", "rows_out", "time_s", ...extra stats}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fastdistill.curation._ds import arrow_column
from fastdistill.files import write_text_atomic
from fastdistill.validation import ConfigError, Problems

logger = logging.getLogger(__name__)

_VERSIONED = ("fastdistill", "datasets", "pyarrow", "numpy", "rensa", "datasketch", "sqlglot", "numba", "pyyaml")


def library_versions() -> dict:
    """Versions of Python and the libraries that influence curation results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["sqlite"] = __import__("sqlite3").sqlite_version
    return out


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray,)):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def _write_json(path: Path, obj) -> Path:
    """Write a report atomically (:func:`fastdistill.files.write_text_atomic`): a failed run never truncates one."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def write_manifest(path, *, input_ds=None, output_ds, steps: list[dict] | None = None, hash_column: str = "hash",
                   input_source: str | None = None, config: dict | None = None) -> dict:
    """Write ``manifest.json`` (``path`` is the file or a directory) and return its content.

    Contains the input and output ``datasets`` fingerprints and row counts, the step records (row
    counts and parameters per step), the SHA-256 of every kept row (``hash_column`` if present,
    else the hash of the canonical JSON of the whole row), a digest of that list, the config and
    library versions, so a run can be audited and reproduced.
    """
    from fastdistill.curation.canonical import hash_arrow

    path = Path(path)
    if path.suffix != ".json":
        path = path / "manifest.json"
    if hash_column in output_ds.column_names:
        hashes = arrow_column(output_ds, hash_column).to_pylist()
        hash_source = f"column {hash_column!r}"
    else:
        table = output_ds.with_format("arrow")[:] if len(output_ds) else None
        hashes = hash_arrow(table, table.column_names).to_pylist() if table is not None else []
        hash_source = "sha256 of the canonical JSON of all columns"
    manifest = {
        "created_unix": time.time(),
        "input": None if input_ds is None else {"fingerprint": input_ds._fingerprint, "rows": len(input_ds),
                                                 "columns": input_ds.column_names, "source": input_source},
        "output": {"fingerprint": output_ds._fingerprint, "rows": len(output_ds), "columns": output_ds.column_names},
        "steps": steps or [],
        "kept_row_hash_source": hash_source,
        "kept_rows_digest": hashlib.sha256("\n".join(h or "" for h in hashes).encode()).hexdigest(),
        "kept_row_hashes": hashes,
        "config": config,
        "versions": library_versions(),
    }
    _write_json(path, manifest)
    logger.info("wrote %s (%d kept rows)", path, len(hashes))
    return manifest


#: the metrics of :func:`quality_report` (what ``min_<metric>`` / ``max_<metric>`` gate thresholds may name)
QUALITY_METRICS = ("rows_in", "rows_out", "keep_ratio", "duplicate_ratio", "exec_match_rate", "exec_error_rate",
                   "tests_pass_rate", "mean_kill_rate", "mean_score", "output_mean_score")


def gate_problems(thresholds, where: str = "gate", problems: Problems | None = None) -> Problems:
    """Every problem of a gate mapping: keys must be ``min_``/``max_`` + a metric of :data:`QUALITY_METRICS`
    (a typo gets the closest valid name), values finite numbers."""
    p = problems if problems is not None else Problems()
    if thresholds is None:
        return p
    valid = [f"{side}_{m}" for m in QUALITY_METRICS for side in ("min", "max")]
    if p.keys(thresholds, valid, where):
        for key, limit in thresholds.items():
            if key in valid:
                p.number(limit, f"{where}.{key}")
    return p


def _rate(ds, column: str) -> float | None:
    if column not in ds.column_names or len(ds) == 0:
        return None
    arr = pc.cast(arrow_column(ds, column), pa.float64())
    m = pc.mean(arr).as_py()
    return None if m is None else float(m)


def _value_counts(ds, column: str) -> dict:
    if column not in ds.column_names or len(ds) == 0:
        return {}
    vc = pc.value_counts(arrow_column(ds, column))
    return {str(v["values"]): int(v["counts"]) for v in vc.to_pylist() if v["values"] is not None}


def _distribution(ds, column: str) -> dict | None:
    if column not in ds.column_names or len(ds) == 0:
        return None
    x = pc.drop_null(pc.cast(arrow_column(ds, column), pa.float64())).to_numpy()
    if len(x) == 0:
        return {"count": 0}
    hist, edges = np.histogram(x, bins=10, range=(0.0, 1.0) if x.min() >= 0 and x.max() <= 1 else None)
    return {"count": int(len(x)), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p10": float(np.quantile(x, 0.1)), "p50": float(np.quantile(x, 0.5)), "p90": float(np.quantile(x, 0.9)),
            "max": float(x.max()), "histogram": {"edges": edges.round(6).tolist(), "counts": hist.tolist()}}


def quality_report(ds, *, steps: list[dict] | None = None, input_rows: int | None = None, out_dir=None,
                   evaluated_ds=None) -> dict:
    """Build (and with ``out_dir`` write) ``quality_report.json`` and ``quality_report.md``.

    ``ds`` is the curated output; ``evaluated_ds`` (default ``ds``) is the data on which pass and
    match rates, score distribution and error classes are measured -- normally the data before
    ``keep_by_score``, so the rates describe the teacher, not the filter. Duplicate ratio comes
    from the ``deduplicate`` step records (or an ``is_duplicate`` column). Returns
    ``{"metrics": {...flat numbers the gate checks...}, "details": {...}}``.
    """
    steps = steps or []
    ev = ds if evaluated_ds is None else evaluated_ds
    rows_in = input_rows if input_rows is not None else (steps[0]["rows_in"] if steps else len(ds))
    dedup_in = sum(s["rows_in"] for s in steps if s.get("name") == "deduplicate")
    dedup_removed = sum(s["rows_in"] - s["rows_out"] for s in steps if s.get("name") == "deduplicate")
    dup_ratio = dedup_removed / dedup_in if dedup_in else None
    if dup_ratio is None and "is_duplicate" in ds.column_names:
        dup_ratio = _rate(ds, "is_duplicate")
    metrics = {
        "rows_in": rows_in,
        "rows_out": len(ds),
        "keep_ratio": (len(ds) / rows_in) if rows_in else None,
        "duplicate_ratio": dup_ratio,
        "exec_match_rate": _rate(ev, "exec_match"),
        "exec_error_rate": None,
        "tests_pass_rate": _rate(ev, "tests_passed"),
        "mean_kill_rate": _rate(ev, "kill_rate"),
        "mean_score": _rate(ev, "score"),
        "output_mean_score": _rate(ds, "score"),
    }
    if "exec_error" in ev.column_names and len(ev):
        metrics["exec_error_rate"] = float(pc.sum(pc.is_valid(arrow_column(ev, "exec_error"))).as_py()) / len(ev)
    details = {
        "rows_per_step": [{"name": s.get("name"), "rows_in": s.get("rows_in"), "rows_out": s.get("rows_out")}
                          for s in steps],
        "exec_error_classes": _value_counts(ev, "exec_error"),
        "tests_error_classes": _value_counts(ev, "tests_error"),
        "rule_filter_reasons": dict(sum((Counter(s.get("reasons", {})) for s in steps), Counter())),
        "score_distribution": _distribution(ev, "score"),
        "evaluated_rows": len(ev),
    }
    report = {"metrics": metrics, "details": details}
    if out_dir is not None:
        out_dir = Path(out_dir)
        _write_json(out_dir / "quality_report.json", report)
        write_text_atomic(out_dir / "quality_report.md", render_quality_summary(report))
    return report


def render_quality_summary(report: dict) -> str:
    """Readable Markdown summary of a quality report."""
    m, d = report["metrics"], report["details"]

    def fmt(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    lines = ["# Quality report", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in m.items()]
    lines += ["", "## Rows per step", "", "| step | rows in | rows out |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['rows_in']} | {s['rows_out']} |" for s in d["rows_per_step"]]
    for key in ("exec_error_classes", "tests_error_classes", "rule_filter_reasons"):
        if d.get(key):
            lines += ["", f"## {key.replace('_', ' ')}", ""]
            lines += [f"- {k}: {v}" for k, v in sorted(d[key].items(), key=lambda kv: -kv[1])]
    if d.get("score_distribution") and d["score_distribution"].get("count"):
        s = d["score_distribution"]
        lines += ["", "## Score distribution", "",
                  f"mean {s['mean']:.3f}, p10 {s['p10']:.3f}, median {s['p50']:.3f}, p90 {s['p90']:.3f} "
                  f"(n={s['count']})"]
    return "\n".join(lines) + "\n"


def timing_report(steps: list[dict], *, out_dir=None) -> dict:
    """Per-step wall time and rows/s (rows entering the step per second); writes timing_report.json."""
    rows = []
    for s in steps:
        t = float(s.get("time_s", 0.0))
        rows.append({"name": s.get("name"), "time_s": t, "rows_in": s.get("rows_in"), "rows_out": s.get("rows_out"),
                     "rows_per_s": (s.get("rows_in") or 0) / t if t > 0 else None})
    report = {"steps": rows, "total_time_s": sum(r["time_s"] for r in rows)}
    if out_dir is not None:
        _write_json(Path(out_dir) / "timing_report.json", report)
    return report


@dataclass
class GateResult:
    """Outcome of :func:`quality_gate`: ``passed`` and the list of failed thresholds (all of them)."""

    passed: bool
    failures: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed


def quality_gate(report: dict, thresholds: dict) -> GateResult:
    """Check a quality report against thresholds; every failed threshold is named.

    ``thresholds`` maps ``"min_<metric>"`` / ``"max_<metric>"`` to a number, where ``<metric>`` is a
    key of ``report["metrics"]`` (e.g. ``min_rows_out``, ``max_duplicate_ratio``,
    ``min_exec_match_rate``, ``min_tests_pass_rate``, ``min_mean_score``). A metric that is missing
    or None fails its threshold (the gate never passes on data it could not measure).
    """
    problems = gate_problems(thresholds or {}, "quality_gate")
    if problems:
        raise ConfigError(problems.message())
    metrics = report.get("metrics", report)
    failures, checked = [], {}
    for key, limit in (thresholds or {}).items():
        if key.startswith("min_"):
            metric, ok_fn, sym = key[4:], (lambda v, lim: v >= lim), ">="
        elif key.startswith("max_"):
            metric, ok_fn, sym = key[4:], (lambda v, lim: v <= lim), "<="
        else:
            raise ValueError(f"quality_gate: threshold {key!r} must start with 'min_' or 'max_'")
        value = metrics.get(metric)
        checked[key] = {"metric": metric, "value": value, "limit": limit}
        if value is None:
            failures.append(f"{key}: metric {metric!r} not available in the report (need {sym} {limit})")
        elif not ok_fn(value, limit):
            failures.append(f"{key}: {metric} = {value:.6g} is not {sym} {limit}")
    result = GateResult(passed=not failures, failures=failures, checked=checked)
    if failures:
        logger.warning("quality gate FAILED: %s", "; ".join(failures))
    else:
        logger.info("quality gate passed (%d thresholds)", len(checked))
    return result
