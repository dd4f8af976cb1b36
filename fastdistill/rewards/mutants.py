"""AST mutation operators: the mutants of a piece of code (pure Python, nothing runs here).

:func:`generate_mutants` lists every distinct, compilable single-point mutation of the code (see
:data:`OPERATORS`), optionally a seeded, nested sample of them; :mod:`fastdistill.rewards.mutation`
runs them against test files in the sandbox.
"""

from __future__ import annotations

import ast
import functools
import random
from dataclasses import dataclass


_ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
          ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
          ast.LShift: ast.RShift, ast.RShift: ast.LShift}
_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_DELETABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise)

OPERATORS = ("arithmetic", "comparison", "boolean", "unary", "constant", "off_by_one", "return_value",
             "negate_condition", "delete_statement", "break_continue", "slice_index")


@dataclass
class Mutant:
    """One mutated version of the code: ``operator`` applied at ``line``; ``source`` is runnable.

    ``pairs_with`` (explicit mutants of a rewritten CUT, see :func:`score_batch`): the source of the
    original CUT's mutant this one rewrites; it then runs only if that mutant was killed, and is
    reported as not killed without running otherwise (robustness only looks at killed pairs).
    """

    operator: str
    line: int
    description: str
    source: str
    pairs_with: str | None = None




def _is_docstring(node, parent) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            and isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and parent.body and parent.body[0] is node)


def _candidates(tree: ast.AST) -> list[tuple[ast.AST, str, str, object]]:
    """Every (node, operator, description, payload) mutation point, in a deterministic order."""
    points = []
    docstring_values = set()
    in_function = set()
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                if _is_docstring(child, parent):
                    docstring_values.add(id(child.value))
                if isinstance(parent, (ast.FunctionDef, ast.AsyncFunctionDef)) or id(parent) in in_function:
                    in_function.add(id(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            points.append((node, "arithmetic", f"{type(node.op).__name__} -> {_ARITH[type(node.op)].__name__}", None))
        elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITH:
            points.append((node, "arithmetic", f"{type(node.op).__name__}= -> {_ARITH[type(node.op)].__name__}=", None))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in _COMPARE:
                    points.append((node, "comparison", f"{type(op).__name__} -> {_COMPARE[type(op)].__name__}", i))
        elif isinstance(node, ast.BoolOp):
            points.append((node, "boolean", "and <-> or", None))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.Not, ast.USub, ast.Invert)):
            points.append((node, "unary", f"drop {type(node.op).__name__}", None))
        elif isinstance(node, ast.Constant) and id(node) not in docstring_values:
            value = node.value
            if isinstance(value, bool):
                points.append((node, "constant", f"{value} -> {not value}", not value))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                points.append((node, "off_by_one", f"{value} -> {value + 1}", value + 1))
                points.append((node, "off_by_one", f"{value} -> {value - 1}", value - 1))
                if value not in (0, 1):
                    points.append((node, "constant", f"{value} -> 0", 0))
            elif isinstance(value, str):
                points.append((node, "constant", "string -> " + ("'XX'" if value else "''"), "XX" if not value else ""))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            points.append((node, "return_value", "return value -> None", None))
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            points.append((node, "negate_condition", "condition -> not condition", None))
        elif isinstance(node, ast.Break):
            points.append((node, "break_continue", "break -> continue", None))
        elif isinstance(node, ast.Continue):
            points.append((node, "break_continue", "continue -> break", None))
        elif isinstance(node, ast.Slice):
            for bound in ("lower", "upper"):
                if getattr(node, bound) is not None:
                    points.append((node, "slice_index", f"slice {bound} + 1", bound))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and not isinstance(node.slice, (ast.Slice, ast.Constant, ast.Tuple)):
            points.append((node, "slice_index", "index + 1", None))
        if isinstance(node, _DELETABLE) and id(node) in in_function and not (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            points.append((node, "delete_statement", "statement -> pass", None))
    return points


def _apply(node: ast.AST, operator: str, payload) -> ast.AST | None:
    """Mutate ``node`` in place; return a node that replaces it in its parent, or None."""
    if operator == "arithmetic":
        node.op = _ARITH[type(node.op)]()
    elif operator == "comparison":
        node.ops[payload] = _COMPARE[type(node.ops[payload])]()
    elif operator == "boolean":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif operator == "unary":
        return node.operand
    elif operator in ("constant", "off_by_one"):
        node.value = payload
    elif operator == "return_value":
        node.value = ast.Constant(None)
    elif operator == "negate_condition":
        node.test = ast.UnaryOp(ast.Not(), node.test)
    elif operator == "break_continue":
        return ast.Continue() if isinstance(node, ast.Break) else ast.Break()
    elif operator == "slice_index":
        if payload is None:
            node.slice = ast.BinOp(node.slice, ast.Add(), ast.Constant(1))
        else:
            setattr(node, payload, ast.BinOp(getattr(node, payload), ast.Add(), ast.Constant(1)))
    elif operator == "delete_statement":
        return ast.Pass()
    return None


def _slots(tree: ast.AST) -> dict[int, tuple[ast.AST, str, int | None]]:
    """``id(node) -> (parent, field, index in the field's list or None)`` for every node below ``tree``."""
    slots = {}
    for parent in ast.walk(tree):
        for name, value in ast.iter_fields(parent):
            if isinstance(value, list):
                for i, child in enumerate(value):
                    if isinstance(child, ast.AST):
                        slots[id(child)] = (parent, name, i)
            elif isinstance(value, ast.AST):
                slots[id(value)] = (parent, name, None)
    return slots


def _mutated_source(tree, slots, node, operator, payload) -> str:
    """``ast.unparse`` of ``tree`` with one mutation applied, leaving ``tree`` as it was.

    The mutation is applied in place and undone afterwards (the node's fields, and its slot in its
    parent for replacing operators), instead of deep-copying the tree for every mutant.
    """
    saved = {name: list(value) if isinstance(value, list) else value for name, value in ast.iter_fields(node)}
    parent, field_name, index = slots[id(node)]
    replacement = _apply(node, operator, payload)
    if replacement is not None:  # (locations are not needed: only the unparsed source is kept)
        if index is None:
            setattr(parent, field_name, replacement)
        else:
            getattr(parent, field_name)[index] = replacement
    try:
        return ast.unparse(tree)
    finally:
        if replacement is not None:
            if index is None:
                setattr(parent, field_name, node)
            else:
                getattr(parent, field_name)[index] = node
        for name, value in saved.items():
            setattr(node, name, value)


def generate_mutants(code: str, *, max_mutants: int | None = None, seed: int = 0) -> list[Mutant]:
    """Return the distinct, compilable mutants of ``code`` (AST-based, deterministic for a seed).

    Operators: see :data:`OPERATORS`. With ``max_mutants`` a seeded random subset is kept, in the
    original order; samples are nested (for one seed, the subset kept under a smaller cap is part
    of the subset kept under a larger one), so requests with different caps share their runs.
    Raises ``SyntaxError`` if ``code`` does not parse.
    """
    tree = ast.parse(code)
    original = ast.unparse(tree)
    slots = _slots(tree)
    mutants, seen = [], {original}
    for node, operator, description, payload in _candidates(tree):
        try:
            source = _mutated_source(tree, slots, node, operator, payload)
            compile(source, "<mutant>", "exec")
        except (SyntaxError, ValueError, TypeError, RecursionError):
            continue
        if source in seen:
            continue
        seen.add(source)
        mutants.append(Mutant(operator=operator, line=getattr(node, "lineno", 0), description=description,
                              source=source))
    if max_mutants is not None and len(mutants) > max_mutants:
        order = list(range(len(mutants)))
        random.Random(seed).shuffle(order)  # a prefix of one seeded permutation: nested samples
        keep = sorted(order[:max_mutants])
        mutants = [mutants[i] for i in keep]
    return mutants



@functools.lru_cache(maxsize=1024)  # thread-safe; a code that does not parse raises and is not cached
def _memoised_mutants(code: str, max_mutants: int | None, seed: int) -> tuple[Mutant, ...]:
    return tuple(generate_mutants(code, max_mutants=max_mutants, seed=seed))


def _mutants_of(code: str, max_mutants, seed: int) -> list[Mutant]:
    """:func:`generate_mutants`, memoised: in a GRPO batch every generation of a prompt shares its CUT.

    ``max_mutants`` may also be an explicit sequence of :class:`Mutant` (returned as a list).
    """
    if isinstance(max_mutants, (list, tuple)):
        return list(max_mutants)
    return list(_memoised_mutants(code, max_mutants, seed))
