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
        full_logits_loss (`bool`, *optional*):
            Compute the NLL loss from the model's full logits (one log-softmax over the trained positions)
            instead of TRL's fused, chunked LM head (same loss, same logged metrics). TRL's head saves
            memory on large vocabularies; on a CPU with small batches of logits it costs time (1.4x slower
            per step for the demo's student, see ``benchmarks/bench_sft_step.py``). ``None`` (default):
            full logits on CPU when a batch's logits have at most ``full_logits_max_elements`` elements,
            TRL's head otherwise (GPUs keep TRL's head). ``True``: always full logits; ``False``: always
            TRL's head, exactly as TRL computes it.
        full_logits_max_elements (`int`, defaults to `2**25`):
            Largest ``tokens x vocabulary`` of a batch for which ``full_logits_loss=None`` uses full
            logits (2**25 float32 logits are 128 MiB).
    """

    augment_fn: Any = field(
        default=None, metadata={"help": "Augmentation hook 'package.module:function' taking (example, seed)."}
    )
    augment_probability: float = field(default=0.5, metadata={"help": "Fraction of training rows augmented."})
    augment_mode: str = field(default="replace", metadata={"help": "'replace' or 'append' augmented rows."})
    augment_seed: int = field(default=0, metadata={"help": "Seed of the per-row augmentation draws."})
    full_logits_loss: bool | None = field(
        default=None,
        metadata={"help": "NLL from full logits (True), TRL's fused LM head (False), or full logits on CPU for "
                          "small batches (None)."},
    )
    full_logits_max_elements: int = field(
        default=2**25,
        metadata={"help": "Largest tokens x vocabulary for which full_logits_loss=None uses full logits."},
    )

    def __post_init__(self):
        super().__post_init__()
        from fastdistill.validation import Problems

        p = Problems("SFTConfig")  # every problem of our fields at once; NaN / inf refused
        p.number(self.augment_probability, "augment_probability", minimum=0.0, maximum=1.0)
        p.choice(self.augment_mode, "augment_mode", ("replace", "append"))
        p.number(self.augment_seed, "augment_seed", integer=True)
        p.number(self.full_logits_max_elements, "full_logits_max_elements", integer=True, minimum=0)
        if self.full_logits_loss and self.loss_type != "nll":
            p.add("full_logits_loss", f"True computes the 'nll' loss; loss_type is {self.loss_type!r}")
        p.choice(self.full_logits_loss, "full_logits_loss", (True, False), optional=True)
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
    _full_logits_vocab: int | None = None  # the model's vocabulary size, read on the first full-logits check

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

    def _full_logits_reason(self, inputs, return_outputs) -> str | None:
        """Why this batch cannot take the full-logits path (None: it can)."""
        args = self.args
        if args.loss_type != "nll" or self.label_smoother is not None or self.compute_loss_func is not None:
            return "the loss is not plain NLL (loss_type, label smoothing or compute_loss_func)"
        if self.aux_loss_enabled:
            return "the model adds a router auxiliary loss"
        if return_outputs:
            return "the caller asks for the outputs"
        if "labels" not in inputs or "attention_mask" not in inputs:
            return "the batch has no labels or no attention_mask (padding-free batches)"
        pc = getattr(self.accelerator, "parallelism_config", None)
        if pc is not None and (getattr(pc, "sp_enabled", False) or getattr(pc, "cp_enabled", False)):
            return "sequence or context parallelism shards the batch"
        return None

    def _use_full_logits(self, model, inputs, return_outputs) -> bool:
        choice = getattr(self.args, "full_logits_loss", False)
        if choice is False:
            return False
        reason = self._full_logits_reason(inputs, return_outputs)
        if choice is True:
            if reason is not None:
                raise ValueError(f"full_logits_loss=True cannot compute this batch's loss: {reason}")
            return True
        if reason is not None or inputs["input_ids"].device.type != "cpu":
            return False
        vocab = self._full_logits_vocab
        if vocab is None:
            # read once: the model as given may be wrapped (DDP has no config; a DeepSpeed engine's is its own
            # dict), and unwrapping it asks importlib.metadata whether DeepSpeed is installed (~5 ms a step)
            vocab = self._full_logits_vocab = self.accelerator.unwrap_model(model).config.get_text_config().vocab_size
        return inputs["input_ids"].numel() * vocab <= self.args.full_logits_max_elements

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, or (``SFTConfig.full_logits_loss``) the same NLL from full logits (one log-softmax over
        the trained positions, ``torch.nn.functional.nll_loss``), logging the same ``entropy``,
        ``mean_token_accuracy`` and ``num_tokens`` as TRL."""
        if not self._use_full_logits(model, inputs, return_outputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        import torch
        import torch.nn.functional as F

        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"][:, 1:]  # logits at position i predict token i + 1; -100 on prompt and padding
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[:, :-1]
        mask = labels != -100
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        # one log-softmax over the trained positions serves the loss and the metrics
        picked, targets = logits[mask].float(), labels[mask]
        logp = picked.log_softmax(-1)
        loss = F.nll_loss(logp, targets, reduction="sum") / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:  # as TRL does
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        with torch.no_grad():
            logp = logp.detach()
            entropy = -(logp.exp() * logp).sum(-1)
            correct = logp.argmax(-1) == targets
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(mask.sum()).sum()
        entropy_sum, num_correct = gather(entropy.sum()).sum(), gather(correct.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return loss
