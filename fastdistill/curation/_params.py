"""One table of rules for the curation steps' parameters, used by the steps and by ``fastdistill curate``.

The steps call :func:`check_step_params` on entry (a library user gets a ``ValueError`` naming the
parameter before any row is touched); the ``curate`` runner calls it for every step of a config
before loading the input, with ``where="steps[i]"``, and reports every problem at once.
"""

from __future__ import annotations

from typing import Any

from fastdistill.validation import ConfigError, Problems, check_weights

#: weight names accepted by ``score_from_exec_eval(weights=...)``
SCORE_WEIGHT_KEYS = ("pass", "kill_rate")

_POSITIVE_INT = dict(kind="number", minimum=1, integer=True)
_OPTIONAL_POSITIVE_INT = dict(kind="number", minimum=1, integer=True, optional=True)
_OPTIONAL_NON_NEGATIVE_INT = dict(kind="number", minimum=0, integer=True, optional=True)
_STRING = dict(kind="type", types=str)
_OPTIONAL_STRING = dict(kind="type", types=str, optional=True)
_BOOL = dict(kind="type", types=bool)

# parameter name -> rule (same meaning in every step that has the parameter)
RULES: dict[str, dict] = {
    "timeout_s": dict(kind="number", minimum=0.0, exclusive_minimum=True),
    "num_proc": _OPTIONAL_POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "max_rows": _POSITIVE_INT,
    "num_perm": _POSITIVE_INT,
    "ngram": _POSITIVE_INT,
    "top_k": _OPTIONAL_POSITIVE_INT,
    "max_mutants": _OPTIONAL_POSITIVE_INT,
    "min_len": _OPTIONAL_NON_NEGATIVE_INT,
    "max_len": _OPTIONAL_NON_NEGATIVE_INT,
    "seed": dict(kind="number", integer=True),
    "min_score": dict(kind="number"),
    "threshold": dict(kind="number", minimum=0.0, exclusive_minimum=True, maximum=1.0),
    "regex": dict(kind="regex"),
    "exclude_regex": dict(kind="regex"),
    "weights": dict(kind="weights"),
    "columns": dict(kind="columns"),
    "mutation": _BOOL,
    "canonical": _BOOL,
    "lowercase": _BOOL,
    "sql": _BOOL,
    "predicate_on_row": _BOOL,
    "db_root": _OPTIONAL_STRING,
    "column": _STRING,
    "out_column": _STRING,
    "reason_column": _STRING,
    "mark_column": _STRING,
    "cluster_column": _OPTIONAL_STRING,
    "code_column": _STRING,
    "tests_column": _STRING,
    "db_column": _STRING,
    "pred_column": _STRING,
    "gold_column": _STRING,
    "whitespace": dict(kind="choice", choices=("collapse", "strip", "keep")),
    "parses_as": dict(kind="choice", choices=(None, "python", "sql")),
    "tokenizer": dict(kind="choice", choices=("words", "code")),
    "backend": dict(kind="choice", choices=(None, "rensa", "datasketch")),
    "method": dict(kind="choice", choices=("exact", "minhash")),
    "mode": dict(kind="choice", choices=("drop", "mark")),
}


def _check(p: Problems, name: str, value: Any, where: str) -> None:
    rule = RULES.get(name)
    if rule is None:
        return
    kind = rule["kind"]
    if kind == "number":
        p.number(value, where, minimum=rule.get("minimum"), maximum=rule.get("maximum"),
                 exclusive_minimum=rule.get("exclusive_minimum", False), integer=rule.get("integer", False),
                 optional=rule.get("optional", False))
    elif kind == "type":
        p.type(value, where, rule["types"], optional=rule.get("optional", False))
    elif kind == "choice":
        p.choice(value, where, rule["choices"])
    elif kind == "regex":
        p.regex(value, where)
    elif kind == "weights":
        if value is not None:
            check_weights(value, SCORE_WEIGHT_KEYS, where, need_positive=False, problems=p)
    elif kind == "columns":
        ok = isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(c, str) for c in value))
        if not ok:
            p.add(where, f"expected a column name or a non-empty list of column names, got {value!r}")


def step_problems(params: dict, where: str, problems: Problems | None = None) -> Problems:
    """Add to ``problems`` every parameter of ``params`` that breaks its rule in :data:`RULES`."""
    p = problems if problems is not None else Problems()
    for name, value in params.items():
        _check(p, name, value, f"{where}.{name}" if where else name)
    if isinstance(params.get("min_len"), int) and isinstance(params.get("max_len"), int) \
            and params["min_len"] > params["max_len"]:
        p.add(f"{where}.min_len" if where else "min_len", f"{params['min_len']} is greater than max_len {params['max_len']}")
    return p


def check_step_params(step: str, **params) -> None:
    """Raise :class:`~fastdistill.validation.ConfigError` (a ``ValueError``) listing every bad parameter of ``step``."""
    p = step_problems(params, "")
    if p:
        raise ConfigError(f"{step}: {p.message()}")
