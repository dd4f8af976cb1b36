"""The installed package declares everything it imports, and the TRL internals it relies on exist.

A plain ``pip install -e .`` (no extras) must give a working sandbox, demo and CLI: every module the
package imports is the standard library, torch (installed first on purpose, see the README), a
declared dependency, or an optional extra that is imported lazily where it is needed.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import inspect
import re
import sys
from functools import lru_cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PKG = Path(__file__).resolve().parents[1] / "fastdistill"
# Imported only inside the feature that needs them, from an extra the user opts into.
OPTIONAL = {"deepspeed": "deepspeed", "bitsandbytes": "quant", "ray": "ray", "triton": None}


@lru_cache(maxsize=1)
def _declared() -> tuple[set[str], dict[str, set[str]]]:
    base, extras = set(), {}
    for line in md.requires("fastdistill") or []:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        marker = str(req.marker or "")
        match = re.search(r'extra == "([^"]+)"', marker)
        if match:
            extras.setdefault(match.group(1), set()).add(name)
        else:
            base.add(name)
    return base, extras


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@lru_cache(maxsize=1)
def _module_owners() -> dict:
    return md.packages_distributions()


def _distributions(module: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in _module_owners().get(module, [module])}


def _library_files():
    for path in sorted(PKG.rglob("*.py")):
        if "data/examples" in path.as_posix():  # bundled example test files, run inside the sandbox
            continue
        yield path


def test_sandbox_worker_needs_only_stdlib_and_base_dependencies():
    base, _ = _declared()
    child = PKG / "rewards" / "_child.py"
    missing = {m for m in _imports(child) if m not in sys.stdlib_module_names and not _distributions(m) & base}
    assert not missing, f"the sandbox worker imports {missing}, which a plain `pip install .` does not install"
    assert "pytest" in base  # the worker runs pytest: it must never be a dev-only dependency again


@pytest.mark.parametrize("path", list(_library_files()), ids=lambda p: str(p.relative_to(PKG)))
def test_every_library_import_is_declared(path):
    base, extras = _declared()
    problems = []
    for module in _imports(path):
        if module in sys.stdlib_module_names or module in ("fastdistill", "torch", "__future__"):
            continue
        if module in OPTIONAL:
            extra = OPTIONAL[module]
            if extra is not None and not _distributions(module) & extras.get(extra, set()):
                problems.append(f"{module} (optional) is not in the [{extra}] extra")
            continue
        if not _distributions(module) & base:
            problems.append(f"{module} is imported but not a declared dependency")
    assert not problems, problems


# TRL internals our trainers override or call, with the parameters we pass. TRL is pinned to a
# tested range in pyproject.toml; this fails on an upgrade that renames or reshapes one of them.
def _trl_classes():
    from trl import GRPOTrainer, SFTTrainer
    from trl.experimental.gkd import GKDTrainer

    return {"GRPOTrainer": GRPOTrainer, "SFTTrainer": SFTTrainer, "GKDTrainer": GKDTrainer}


TRL_METHODS = [
    ("GRPOTrainer", "_generate", ["self", "prompts"]),
    ("GRPOTrainer", "_calculate_rewards", ["self", "inputs", "prompts", "completions", "completion_ids_list"]),
    ("GRPOTrainer", "_generate_and_score_completions", ["self", "inputs"]),
    ("GRPOTrainer", "_compute_loss", ["self", "model", "inputs"]),
    ("SFTTrainer", "_prepare_dataset",
     ["self", "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"]),
    ("GKDTrainer", "training_step", ["self", "model", "inputs", "num_items_in_batch"]),
    ("GKDTrainer", "compute_loss", ["self", "model", "inputs", "return_outputs", "num_items_in_batch"]),
    ("GKDTrainer", "generalized_jsd_loss", ["student_logits", "teacher_logits", "labels", "beta", "temperature"]),
]
TRL_ATTRIBUTES = [
    ("GRPOTrainer", ["_metrics", "_tokenizer", "eos_token_ids", "pad_to_multiple_of", "mask_truncated_completions",
                     "current_gradient_accumulation_steps"]),
    ("GKDTrainer", ["_metrics", "teacher_model", "generation_config", "seq_kd", "lmbda"]),
]


@pytest.mark.parametrize("cls_name,method,params", TRL_METHODS, ids=lambda x: x if isinstance(x, str) else None)
def test_trl_method_we_rely_on_exists_with_our_parameters(cls_name, method, params):
    cls = _trl_classes()[cls_name]
    assert hasattr(cls, method), f"trl {cls_name}.{method} no longer exists"
    names = list(inspect.signature(getattr(cls, method)).parameters)
    assert names[: len(params)] == params, f"trl {cls_name}.{method}{names} no longer takes {params}"


@pytest.mark.parametrize("cls_name,attrs", TRL_ATTRIBUTES, ids=lambda x: x if isinstance(x, str) else None)
def test_trl_attributes_we_read_are_still_set(cls_name, attrs):
    cls = _trl_classes()[cls_name]
    source = "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith(("trl", "transformers")))
    missing = [a for a in attrs if f"self.{a}" not in source and not hasattr(cls, a)]
    assert not missing, f"trl {cls_name} no longer sets {missing}"
