"""Small helpers shared by the trainers and recipes."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["model_init_kwargs", "cpu_safe_precision", "backbone", "output_head", "capture_hidden", "unfusable_reason", "unwrap"]


def model_init_kwargs(model_args) -> dict:
    """``from_pretrained`` keyword arguments from TRL's ``ModelConfig`` (dtype, attention, 4/8-bit).

    Uses TRL's own ``get_quantization_config`` so QLoRA behaves as in TRL's scripts
    (``--load_in_4bit --use_peft``); bitsandbytes 4-bit also loads and trains on CPU. A quantized model
    is placed on this process's GPU when there is one (one copy per DDP rank).
    """
    import torch
    from trl import get_quantization_config

    dtype = model_args.dtype if model_args.dtype in ("auto", None) else getattr(torch, model_args.dtype)
    quantization_config = get_quantization_config(model_args)
    kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=dtype,
    )
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if torch.cuda.is_available():
            from accelerate import PartialState

            kwargs["device_map"] = {"": PartialState().local_process_index}
    return {k: v for k, v in kwargs.items() if v is not None}


def cpu_safe_precision(training_args) -> None:
    """Set bf16/fp16 to what this machine supports (TRL defaults to bf16, which raises on CPU and on GPUs
    without bfloat16): off on CPU, fp16 instead of bf16 on a V100 / T4 (see ``launch.device_defaults``)."""
    import torch

    from fastdistill.trainers.launch import device_defaults

    if torch.backends.mps.is_available() and not torch.cuda.is_available():
        return
    for key, value in device_defaults().items():
        if key in ("bf16", "fp16"):
            setattr(training_args, key, value)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP / DeepSpeed-engine wrappers (``.module``), keeping PEFT models as they are."""
    # a DeepSpeedEngine has a `config` of its own (the DeepSpeed config dict), so look for a model config
    while hasattr(model, "module") and not hasattr(getattr(model, "config", None), "get_text_config"):
        model = model.module
    return model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a causal LM (under PEFT and DDP / DeepSpeed wrappers)."""
    model = unwrap(model)
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return getattr(model, model.base_model_prefix)


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The ``lm_head`` module of a causal LM (under PEFT and DDP / DeepSpeed wrappers)."""
    return unwrap(model).get_output_embeddings()


@contextlib.contextmanager
def capture_hidden(module: torch.nn.Module, store: list):
    """Record ``last_hidden_state`` each time ``module`` runs (gradients kept)."""

    def hook(_module, _args, output):
        store.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

    handle = module.register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


# config attributes with which a model scales or caps its logits after the lm_head (TRL checks the same ones)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def unfusable_reason(model: torch.nn.Module) -> str | None:
    """Why the ``lm_head`` of ``model`` cannot be fused into a loss (``None`` if it can).

    Fusing replaces ``logits = lm_head(hidden)`` by a matmul with ``lm_head.weight`` inside the loss, which
    is only exact for a plain ``nn.Linear`` head with no logit transform after it.
    """
    head = output_head(model)
    if type(head) is not torch.nn.Linear:
        return f"its lm_head is a {type(head).__name__}, not a plain nn.Linear"
    config = unwrap(model).config.get_text_config()
    for name in _LOGIT_TRANSFORMS:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return f"its config sets {name}={value} (the logits are transformed after the lm_head)"
    return None


def zero3_enabled(trainer) -> bool:
    """Whether ``trainer`` runs under DeepSpeed ZeRO-3 (parameters partitioned: gathered to be read)."""
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    return bool(trainer.is_deepspeed_enabled and is_deepspeed_zero3_enabled())


def call_as_forward_of(module: torch.nn.Module, fn, *args, gathered=()):
    """Run ``fn(*args)`` as ``module``'s forward, returning a dict of tensors.

    Under DeepSpeed ZeRO-3 a module's partitioned parameters are gathered by hooks around its
    forward and re-gathered for its backward. The fused losses read the ``lm_head`` weight directly,
    so they run *as* the head's forward: the student head's weight is gathered once for the forward
    (not once per chunk) and once for the backward, and its gradient is reduce-scattered by DeepSpeed
    as usual. ``gathered`` parameters (the teacher's head, which needs no gradient) are gathered with
    ``deepspeed.zero.GatheredParameters`` for the duration of the call. ``fn`` must return a dict of
    tensors (module outputs pass through DeepSpeed's hooks as a tuple).
    """
    import deepspeed

    names: list[str] = []

    def forward(*inner_args):
        out = fn(*inner_args)
        names.extend(out)
        return tuple(out.values())

    previous = module.__dict__.get("forward")
    module.forward = forward
    try:
        with deepspeed.zero.GatheredParameters([p for p in gathered if p is not None], modifier_rank=None):
            values = module(*args)
    finally:
        if previous is None:
            del module.__dict__["forward"]
        else:
            module.forward = previous
    return dict(zip(names, values))


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` that computes with its *own* weights.

    After a Trainer (accelerate) prepared a model it carries an instance-level ``forward`` wrapper
    (autocast / output conversion; the class's forward is kept in ``_original_forward`` under mixed
    precision) that ``copy.deepcopy`` leaves tied to the *original* object, so the copy would silently
    run the original's weights (a "frozen" reference that follows the policy). The copy drops those
    wrappers and runs its class's forward; preparing it again (as the trainers do for a teacher)
    re-applies whatever wrapping the run needs.
    """
    import copy

    clone = copy.deepcopy(model)
    for attr in ("forward", "_original_forward"):
        clone.__dict__.pop(attr, None)
    return clone
