"""The user docs stay short, their links resolve, and the README's snippets name real APIs.

Static checks only (no model is built, torch is not imported), so this file costs milliseconds.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
USER_DOCS = [README, ROOT / "CHANGELOG.md", ROOT / "recipes" / "README.md", ROOT / "benchmarks" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 150

# The two commands a new user copies; CI's clean-environment step installs what the first one installs.
DEMO_COMMAND = "pip install torch==2.13.0 && pip install -e . && fastdistill demo"
TEST_COMMAND = 'pip install torch==2.13.0 && pip install -e ".[dev,quant,deepspeed]" && python -m pytest -n 2'

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a repo path written in prose or code: starts with a top-level folder, ends in "/" or a file extension
_REPO_PATH = re.compile(r"(?<![\w./-])((?:fastdistill|recipes|benchmarks|docs|tests)/(?:[\w.-]+/)*(?:[\w-]+\.\w+)?)(?![\w/-])")
_TRACKER_REF = re.compile(r"\bissues?\s*#?\d+|(?<![\w&#/])#\d+\b", re.IGNORECASE)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def _existing_docs():
    return [p for p in USER_DOCS if p.exists()]


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): move detail to docs/"
    assert DEMO_COMMAND in text and TEST_COMMAND in text


@pytest.mark.parametrize("doc", _existing_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(doc):
    text = doc.read_text(encoding="utf-8")
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target} (no such heading)")
    for repo_path in _REPO_PATH.findall(text):
        if not (ROOT / repo_path.rstrip(".")).exists():
            broken.append(repo_path)
    assert not broken, f"{doc.relative_to(ROOT)} points at paths that do not exist: {broken}"


@pytest.mark.parametrize("doc", _existing_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_user_docs_cite_no_tracker_numbers(doc):
    hits = _TRACKER_REF.findall(doc.read_text(encoding="utf-8"))
    assert not hits, f"{doc.relative_to(ROOT)} refers to tracker numbers {hits}; say what the thing is instead"


def _module_names(module: str) -> set[str]:
    """Names a ``fastdistill`` module offers, read from its source (nothing is imported)."""
    base = ROOT.joinpath(*module.split("."))
    source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    assert source.exists(), f"README imports from {module}, which does not exist"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Dict) and module == "fastdistill":  # the lazy exports of the top level
            names.update(k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return names


def test_readme_snippets_parse_and_import_real_names():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 6  # trainers, losses, rewards, curation, annotation, evaluation
    missing = []
    for block in blocks:
        tree = ast.parse(block)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fastdistill":
                offered = _module_names(node.module)
                missing += [f"{node.module}.{a.name}" for a in node.names if a.name not in offered]
    assert not missing, f"README snippets import names that do not exist: {missing}"
