"""Input validation shared by every entry point: configs, step parameters, reward weights, datasets.

Everything here is checked *before* any work starts and reports *every* problem at once, each
naming the field (``steps[2].timeout_s``, ``gate.min_rows_out``, ``row 17, column 'code'``), with
the closest valid name for a typo (:mod:`difflib`, from the standard library). Bad input raises
:class:`UserError` (or its subclass :class:`ConfigError`); the ``fastdistill`` command turns those
into one message and exit status 2 (see :func:`fastdistill.cli.guarded`).

This module imports neither torch nor datasets.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["UserError", "ConfigError", "Problems", "closest", "is_finite_number", "check_weights"]


class UserError(Exception):
    """Bad input from the user (config, file, row, argument); the message names where.

    The ``fastdistill`` command prints the message and exits with status 2, without a traceback.
    """


class ConfigError(UserError, ValueError):
    """A config (file or arguments) is invalid; the message lists every problem found."""


def closest(name: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``name``, or ``""`` if none is close."""
    choices = [str(c) for c in choices]
    match = difflib.get_close_matches(str(name), choices, n=1, cutoff=0.6)
    if not match:  # a shortened name ("speed" for "speed_stability") is too far for difflib's ratio
        match = [c for c in choices if len(str(name)) >= 3 and (c.startswith(str(name)) or str(name) in c)][:2]
        match = match if len(match) == 1 else []
    return f" (did you mean {match[0]!r}?)" if match else ""


def is_finite_number(value: Any) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Problems:
    """Collects the problems of one input and raises them together as one :class:`ConfigError`.

    Example::

        p = Problems("curate.yaml")
        p.keys(config, {"input", "output", "steps", "gate"}, "")
        p.number(config.get("num_proc"), "num_proc", minimum=1, integer=True, optional=True)
        p.raise_if_any()
    """

    def __init__(self, source: str | None = None):
        self.source = source
        self.items: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, where: str, message: str) -> None:
        """Record one problem at ``where`` (a dotted field path; empty for the whole input)."""
        self.items.append(f"{where}: {message}" if where else message)

    def keys(self, mapping: Any, allowed: Iterable[str], where: str, *, required: Iterable[str] = ()) -> bool:
        """Check ``mapping`` is a mapping with only ``allowed`` keys (and every ``required`` one)."""
        if not isinstance(mapping, Mapping):
            self.add(where, f"expected a mapping, got {type(mapping).__name__}")
            return False
        allowed = list(allowed)
        prefix = f"{where}." if where else ""
        for key in mapping:
            if key not in allowed:
                hint = closest(key, allowed) or f"; valid keys: {', '.join(sorted(allowed))}"
                self.add(f"{prefix}{key}", f"unknown key{hint}")
        for key in required:
            if key not in mapping:
                self.add(f"{prefix}{key}", "required")
        return True

    def number(self, value: Any, where: str, *, minimum: float | None = None, maximum: float | None = None,
               exclusive_minimum: bool = False, integer: bool = False, optional: bool = False) -> bool:
        """Check ``value`` is a finite number (an int if ``integer``) inside the given bounds."""
        if value is None and optional:
            return True
        kind = "an integer" if integer else "a number"
        if integer and not (isinstance(value, int) and not isinstance(value, bool)):
            self.add(where, f"expected {kind}, got {value!r}")
            return False
        if not is_finite_number(value):
            self.add(where, f"expected a finite number, got {value!r}")
            return False
        if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
            self.add(where, f"must be {'>' if exclusive_minimum else '>='} {minimum}, got {value!r}")
            return False
        if maximum is not None and value > maximum:
            self.add(where, f"must be <= {maximum}, got {value!r}")
            return False
        return True

    def choice(self, value: Any, where: str, choices: Iterable[Any], *, optional: bool = False) -> bool:
        """Check ``value`` is one of ``choices``."""
        choices = list(choices)
        if (value is None and optional) or value in choices:
            return True
        self.add(where, f"must be one of {choices}, got {value!r}{closest(value, [str(c) for c in choices])}")
        return False

    def type(self, value: Any, where: str, types: type | tuple, *, optional: bool = False, what: str | None = None) -> bool:
        """Check ``isinstance(value, types)`` (bools are not accepted as numbers)."""
        if value is None and optional:
            return True
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)))
        if not ok:
            name = what or " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            self.add(where, f"expected {name}, got {value!r}")
        return ok

    def regex(self, value: Any, where: str, *, optional: bool = True) -> bool:
        """Check ``value`` is a string that compiles as a Python regular expression."""
        if value is None and optional:
            return True
        if not isinstance(value, str):
            self.add(where, f"expected a regular expression string, got {value!r}")
            return False
        try:
            re.compile(value)
        except re.error as err:
            self.add(where, f"invalid regular expression {value!r}: {err}")
            return False
        return True

    def message(self) -> str:
        """All problems as one message (one line per problem when there are several)."""
        head = f"{self.source}: " if self.source else ""
        if len(self.items) == 1:
            return head + self.items[0]
        return f"{head}{len(self.items)} problems:\n" + "\n".join(f"  - {item}" for item in self.items)

    def raise_if_any(self, error: type[Exception] = ConfigError) -> None:
        """Raise ``error`` listing every problem, if there is any."""
        if self.items:
            raise error(self.message())


def check_weights(weights: Any, known: Iterable[str], where: str = "weights", *, need_positive: bool = True,
                  problems: Problems | None = None) -> Problems:
    """Check a ``{name: weight}`` mapping: known names, finite weights >= 0, and (``need_positive``) one > 0.

    With ``problems`` given the findings are added to it; otherwise a :class:`ConfigError` is raised
    listing them all.
    """
    own = problems is None
    p = Problems() if own else problems
    if p.keys(weights, known, where):
        for name, w in weights.items():
            p.number(w, f"{where}.{name}", minimum=0.0)
        if need_positive and weights and all(is_finite_number(w) and w <= 0 for w in weights.values()):
            p.add(where, "at least one weight must be > 0")
    if own:
        p.raise_if_any()
    return p
