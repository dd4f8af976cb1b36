"""SFT with an optional per-sample augmentation hook (robustness training) and QLoRA via TRL's model config."""

from __future__ import annotations

import importlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trl import SFTConfig as _TRLSFTConfig
from trl import SFTTrainer as _TRLSFTTrainer

logger = logging.getLogger(__name__)

__all__ = ["SFTConfig", "SFTTrainer", "resolve_augment_fn"]

AugmentFn = Callable[[dict, int], dict]


def resolve_augment_fn(spec: str | AugmentFn | None) -> AugmentFn | None:
    """Return the augmentation callable for ``spec``: a callable, or a ``"package.module:function"`` path."""
    if spec is None or callable(spec):
        return spec
    module_name, sep, attr = str(spec).partition(":")
    if not sep:
        raise ValueError(f"augment_fn {spec!r} must look like 'package.module:function'")
    fn = getattr(importlib.import_module(module_name), attr, None)
    if not callable(fn):
        raise ValueError(f"augment_fn {spec!r} does not name a callable")
    return fn


@dataclass
class SFTConfig(_TRLSFTConfig):
    """Configuration for :class:`fastdistill.SFTTrainer`; every TRL ``SFTConfig`` field keeps its meaning.

    Args:
        augment_fn (`str` or callable, *optional*):
            Per-sample augmentation hook ``fn(example: dict, seed: int) -> dict`` returning the fields to
            replace, applied to the training set before tokenization. On the command line give it as
            ``"package.module:function"``; in Python a callable works too. ``None`` (default) keeps TRL's
            behaviour exactly.
        augment_probability (`float`, defaults to `0.5`):
            Fraction of training rows that are augmented (chosen by a seeded draw per row).
        augment_mode (`str`, defaults to `"replace"`):
            ``"replace"``: an augmented row takes the place of its original; ``"append"``: augmented copies
            are added after the original rows, which all stay.
        augment_seed (`int`, defaults to `0`):
            Seed of the per-row draws; row ``i`` gets seed ``augment_seed * 1_000_003 + i``, so runs are
            reproducible and independent of ``num_proc``.
    """

    augment_fn: Any = field(
        default=None, metadata={"help": "Augmentation hook 'package.module:function' taking (example, seed)."}
    )
    augment_probability: float = field(default=0.5, metadata={"help": "Fraction of training rows augmented."})
    augment_mode: str = field(default="replace", metadata={"help": "'replace' or 'append' augmented rows."})
    augment_seed: int = field(default=0, metadata={"help": "Seed of the per-row augmentation draws."})

    def __post_init__(self):
        super().__post_init__()
        from fastdistill.validation import Problems

        p = Problems("SFTConfig")  # every problem of our fields at once; NaN / inf refused
        p.number(self.augment_probability, "augment_probability", minimum=0.0, maximum=1.0)
        p.choice(self.augment_mode, "augment_mode", ("replace", "append"))
        p.number(self.augment_seed, "augment_seed", integer=True)
        p.raise_if_any()


def augment_dataset(dataset, fn: AugmentFn, probability: float, mode: str, seed: int):
    """Apply ``fn`` to a seeded random subset of rows (``datasets.map``; cached and fingerprinted)."""

    def row_seed(index: int) -> int:
        return seed * 1_000_003 + index

    def selected(index: int) -> bool:
        return random.Random(row_seed(index)).random() < probability

    def apply(example, index):
        if not selected(index):
            return {"augmented": False}
        changes = fn(dict(example), row_seed(index))
        if not isinstance(changes, dict):
            raise ValueError(f"row {index}: augment_fn must return a dict of fields, got {type(changes).__name__}")
        unknown = set(changes) - set(example)
        if unknown:
            raise ValueError(f"row {index}: augment_fn returned unknown fields {sorted(unknown)}")
        return {**changes, "augmented": True}

    if mode == "replace":
        return dataset.map(apply, with_indices=True, desc="Augmenting")
    from datasets import concatenate_datasets

    chosen = [i for i in range(len(dataset)) if selected(i)]
    copies = dataset.select(chosen).map(
        lambda example, j: {**fn(dict(example), row_seed(chosen[j])), "augmented": True},
        with_indices=True,
        desc="Augmenting",
    )
    originals = dataset.map(lambda _: {"augmented": False}, desc="Marking originals")
    return concatenate_datasets([originals, copies])


class SFTTrainer(_TRLSFTTrainer):
    """TRL's ``SFTTrainer`` plus an optional per-sample augmentation hook.

    The hook (``SFTConfig.augment_fn``) rewrites a seeded subset of training rows before
    tokenization, e.g. with :func:`fastdistill.augment.robust_augment` applied to the code in the
    prompt, so the student learns to test code whatever its identifiers and comments. Augmented rows
    carry ``augmented=True``. With ``augment_fn=None`` nothing differs from TRL.

    QLoRA goes through TRL's own machinery: pass ``peft_config`` and a model loaded with a
    bitsandbytes 4-bit ``quantization_config`` (see :func:`fastdistill.trainers.model_init_kwargs`,
    which builds it from TRL's ``ModelConfig``).
    """

    _tag_names = ["trl", "sft", "fastdistill"]

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        fn = resolve_augment_fn(getattr(args, "augment_fn", None))
        if fn is not None and dataset_name == "train" and hasattr(dataset, "map"):
            before = len(dataset)
            dataset = augment_dataset(dataset, fn, args.augment_probability, args.augment_mode, args.augment_seed)
            logger.info(
                "augmentation: %d of %d training rows augmented (%s mode)",
                sum(dataset["augmented"]),
                before,
                args.augment_mode,
            )
        return super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
