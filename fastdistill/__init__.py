"""fastdistill: distill large code models into small, fast students on top of Hugging Face TRL.

The trainers are imported lazily so that ``fastdistill.rewards``, ``fastdistill.augment`` and
``fastdistill.curation`` can be used on machines without torch (``import fastdistill.curation``
never pulls in torch or TRL).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "SFTTrainer": "fastdistill.trainers",
    "SFTConfig": "fastdistill.trainers",
    "GKDTrainer": "fastdistill.trainers",
    "GKDConfig": "fastdistill.trainers",
    "GRPOTrainer": "fastdistill.trainers",
    "GRPOConfig": "fastdistill.trainers",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    # for type checkers; at run time __getattr__ imports them on first use
    from fastdistill.trainers import GKDConfig, GKDTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer  # noqa: F401


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastdistill' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
