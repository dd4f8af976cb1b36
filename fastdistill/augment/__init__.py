"""Semantics-preserving code perturbations used for robustness rewards and SFT augmentation.

``robust_augment`` rewrites code through the AST:

* **renaming** (``rename=True``): local variables of functions and methods (assignment, loop,
  ``with``/``except`` and comprehension targets) get consistent new names. Parameters are *not*
  renamed, because tests may call functions by keyword and we cannot know; neither are module-level
  names (the public functions and classes tests import), attributes, globals/nonlocals, or
  anything in a function that calls ``locals``/``vars``/``eval``/``exec``.
* **comments** (``comments=True``): the AST round trip drops existing comments; then, seeded, some
  docstrings are removed, some functions without one get a neutral docstring, and neutral
  ``#`` comment lines are inserted before statements.

Only the standard library is used (no torch).
"""

from __future__ import annotations

import ast
import builtins
import random

__all__ = ["robust_augment"]

_WORDS = ("val", "tmp", "item", "acc", "cur", "elem", "node", "part", "buf", "res", "obj", "data")
_COMMENTS = ("# keep going", "# helper step", "# update state", "# compute the next value", "# note: see below",
             "# straightforward case")
_DYNAMIC = {"locals", "vars", "eval", "exec", "globals"}


def _stored_names(func: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _protected_names(func: ast.AST) -> set[str]:
    protected = set()
    for node in ast.walk(func):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            for arg in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if arg is not None:
                    protected.add(arg.arg)
            if not isinstance(node, ast.Lambda):
                protected.add(node.name)
        elif isinstance(node, ast.ClassDef):
            protected.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            protected.update(node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            protected.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return protected


def _uses_dynamic_scope(func: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id in _DYNAMIC for n in ast.walk(func))


class _Renamer(ast.NodeTransformer):
    def __init__(self, mapping):
        self.mapping = mapping

    def visit_Name(self, node):
        if node.id in self.mapping:
            node.id = self.mapping[node.id]
        return node

    def visit_ExceptHandler(self, node):
        if node.name in self.mapping:
            node.name = self.mapping[node.name]
        self.generic_visit(node)
        return node


def _outer_functions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield item


def _rename(tree: ast.Module, rng: random.Random) -> None:
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    taken |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    taken |= set(dir(builtins))
    module_names = set()
    for node in tree.body:
        module_names |= _stored_names(node) if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) else set()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            module_names.add(node.name)
    for func in _outer_functions(tree):
        if _uses_dynamic_scope(func):
            continue
        candidates = sorted(_stored_names(func) - _protected_names(func) - module_names)
        mapping = {}
        for name in candidates:
            while True:
                new = f"{rng.choice(_WORDS)}_{rng.randrange(100, 1000)}"
                if new not in taken:
                    break
            taken.add(new)
            mapping[name] = new
        if mapping:
            _Renamer(mapping).visit(func)


def _docstrings(tree: ast.Module, rng: random.Random, rate: float) -> None:
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        body = node.body
        has_doc = body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str)
        if has_doc and len(body) > 1 and rng.random() < rate:
            del body[0]
        elif not has_doc and rng.random() < rate:
            body.insert(0, ast.Expr(ast.Constant(f"{node.name}: implementation detail.")))


def _insert_comments(source: str, rng: random.Random) -> str:
    tree = ast.parse(source)
    starts = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt):
            starts.setdefault(node.lineno, node.col_offset)
    lines = source.splitlines()
    out = []
    for number, line in enumerate(lines, start=1):
        if number in starts and rng.random() < 0.3:
            out.append(" " * starts[number] + rng.choice(_COMMENTS))
        out.append(line)
    return "\n".join(out) + "\n"


def robust_augment(code: str, *, seed: int, rename: bool = True, comments: bool = True,
                   flip_docstrings: float = 0.5) -> str:
    """Return a semantics-preserving rewrite of ``code`` (deterministic for a given ``seed``).

    Public names (module-level functions, classes, assignments), parameters and attributes are
    kept, so tests that import from the module still work; see the module docstring for the exact
    rules. With ``comments``, each function's or class's docstring is flipped with probability
    ``flip_docstrings`` (an existing one removed unless it is the whole body, a missing one added);
    ``1.0`` flips every one, which is what a robustness check wants. Raises ``SyntaxError`` if
    ``code`` does not parse.
    """
    rng = random.Random(seed)
    tree = ast.parse(code)
    if rename:
        _rename(tree, rng)
    if comments:
        _docstrings(tree, rng, flip_docstrings)
    ast.fix_missing_locations(tree)
    source = ast.unparse(tree) + "\n"
    if comments:
        source = _insert_comments(source, rng)
    return source
