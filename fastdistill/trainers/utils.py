"""Small helpers shared by the trainers and recipes."""

from __future__ import annotations

__all__ = ["model_init_kwargs", "cpu_safe_precision"]


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
    """Turn bf16/fp16 off when no accelerator is present (TRL defaults to bf16, which raises on CPU)."""
    import torch

    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        training_args.bf16 = False
        training_args.fp16 = False
