"""Make one recipe command work on a laptop CPU and on a multi-GPU node, and record how it ran.

The recipes call three things from here:

* :func:`configure_environment` at import time, before ``torch.distributed`` or accelerate start:
  without a GPU it sets ``ACCELERATE_USE_CPU=true`` (otherwise ``accelerate launch`` with a DDP
  config starts N *independent* single-process runs that all exit 0) and, always, a persistent
  ``TORCH_EXTENSIONS_DIR`` so DeepSpeed compiles its small CPU extension once.
* :func:`parse_args`: TRL's ``TrlParser`` with the device defaults of :func:`device_defaults`
  inserted between the YAML config and the command line, so they beat a config written for GPUs
  (``bf16: true`` raises on CPU) and an explicit command-line flag still beats them.
* :class:`RunInfoCallback`: writes ``run_info.json`` into the output directory (world size,
  distributed type, backend, DeepSpeed ZeRO stage, the global step the run started and ended at),
  so a launcher's effect is checkable after the fact.

On a machine with CUDA all of this is a no-op apart from ``TORCH_EXTENSIONS_DIR`` and the run info.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "has_gpu",
    "bf16_supported",
    "configure_environment",
    "device_defaults",
    "apply_device_defaults",
    "parse_args",
    "last_checkpoint",
    "resolve_resume",
    "setup_logging",
    "finish",
    "RunInfoCallback",
    "RUN_INFO_NAME",
]

RUN_INFO_NAME = "run_info.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def has_gpu() -> bool:
    """Whether an accelerator that TRL's bf16 defaults and NCCL can use is present (CUDA, ROCm or XPU)."""
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _deepspeed_launch() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def configure_environment() -> None:
    """Set the environment variables that must exist before accelerate / ``torch.distributed`` start.

    Idempotent, and never overrides a variable the user set:

    * ``TORCH_EXTENSIONS_DIR``: ``<tmp>/fastdistill-torch-extensions-<uid>`` (DeepSpeed builds its CPU
      Adam / comm extensions there once, ~40 s, and reuses them).
    * without a GPU, and unless this is a DeepSpeed launch (which sets up its own CPU comm group):
      ``ACCELERATE_USE_CPU=true``, so DDP processes join one gloo process group.
    """
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(tempfile.gettempdir(), f"fastdistill-torch-extensions-{uid}"))
    if not has_gpu() and not _deepspeed_launch():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def _distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def bf16_supported() -> bool:
    """Whether the accelerator computes in bfloat16 (Ampere and newer, ROCm MI200+, XPU); not V100 or T4."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def device_defaults() -> dict:
    """Training-argument values this machine needs: ``{}`` on a GPU with bf16; ``fp16`` instead of TRL's
    default ``bf16`` on a GPU without it (V100, T4; logged as a warning); without a GPU bf16/fp16 off and,
    in a multi-process launch, ``ddp_backend="gloo"`` (DeepSpeed and accelerate otherwise disagree on
    the world size on CPU; in a single process a backend must not be set at all)."""
    if has_gpu():
        if bf16_supported():
            return {}
        logger.warning("this GPU has no bfloat16 support: training in fp16 instead of bf16")
        return {"bf16": False, "fp16": True}
    defaults = {"bf16": False, "fp16": False}
    if _distributed():
        defaults["ddp_backend"] = "gloo"
    return defaults


def apply_device_defaults(training_args):
    """Apply :func:`device_defaults` to an already-built config (for Python users; returns it).

    Prefer passing ``**device_defaults()`` when building the config: ``TrainingArguments`` checks bf16
    and initialises the distributed state in ``__post_init__``, so a config built with ``bf16=True``
    on a CPU-only machine raises before this can run, and ``ddp_backend`` set afterwards only affects
    state created later.
    """
    for key, value in device_defaults().items():
        setattr(training_args, key, value)
    return training_args


def _as_cli(defaults: dict) -> list[str]:
    return [item for key, value in defaults.items() for item in (f"--{key}", str(value))]


def parse_args(parser, args: Sequence[str] | None = None):
    """``parser.parse_args_and_config`` with :func:`device_defaults` applied between config and CLI.

    Precedence: dataclass defaults < ``--config`` YAML < device defaults < command-line flags. Also
    calls :func:`configure_environment` (in case the recipe did not at import time).
    """
    configure_environment()
    args = list(sys.argv[1:] if args is None else args)
    defaults = device_defaults()
    if defaults:
        logger.info("no GPU: using %s", ", ".join(f"{k}={v}" for k, v in defaults.items()))
    # argparse keeps the last occurrence of a flag, so the user's own flags (after these) win.
    return parser.parse_args_and_config(args=_as_cli(defaults) + args)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The ``checkpoint-<step>`` folder with the highest step in ``output_dir`` (``None`` if there is none).

    A checkpoint counts only once its ``trainer_state.json`` is written, which the Trainer does last,
    so a folder left half-written by a kill is ignored.
    """
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isfile(os.path.join(output_dir, name, "trainer_state.json")):
            steps.append((int(match.group(1)), name))
    return os.path.join(output_dir, max(steps)[1]) if steps else None


def resolve_resume(training_args) -> str | None:
    """The checkpoint to resume from: ``resume_from_checkpoint`` may be a path, or ``"last"``/``"true"``
    meaning the last checkpoint in ``output_dir`` when there is one (a fresh start otherwise)."""
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("last", "true", "auto"):
        found = last_checkpoint(training_args.output_dir)
        logger.info("resume: %s", found or f"no checkpoint in {training_args.output_dir}, starting fresh")
        return found
    if not os.path.isdir(value):
        raise FileNotFoundError(f"resume_from_checkpoint={value!r} is not a directory")
    return value


def setup_logging(training_args) -> logging.Logger:
    """Log through ``logging`` to stderr; returns the recipe's logger.

    ``recipes`` and ``fastdistill`` messages are shown at INFO on the main process (WARNING on the
    others); transformers and datasets follow the config's ``log_level`` / ``log_level_replica``.
    """
    import datasets
    import transformers

    library_level = training_args.get_process_log_level()
    ours = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=library_level, force=True)
    for name in ("recipes", "fastdistill"):
        logging.getLogger(name).setLevel(ours)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    return logging.getLogger("recipes")


def finish(trainer) -> None:
    """End a recipe (call it last): wait for every process, finish the trackers, destroy the process group.

    In a multi-process run on gloo (CPU) the process then exits at once with status 0, after flushing
    logs and stdio. Otherwise gloo's worker threads may still be releasing their last collective
    (a ZeRO all-gather behind a barrier) when Python finalises; the release needs the GIL, and a
    thread that asks for it during finalisation aborts the process ("terminate called without an
    active exception", SIGABRT) after a run that succeeded, so ``accelerate launch`` reports failure
    for about one launch in four.
    """
    import torch.distributed as dist

    on_gloo = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and (
        dist.get_backend() == "gloo"
    )
    trainer.accelerator.wait_for_everyone()
    trainer.end()
    if on_gloo:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _trainer_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class RunInfoCallback(_trainer_callback_base()):
    """Write ``run_info.json`` to ``output_dir`` at the end of training (main process only).

    Fields: ``world_size`` (from ``torch.distributed`` when initialised, so independent processes
    that each believe they are alone report 1), ``accelerate_num_processes``, ``distributed_type``,
    ``backend``, ``zero_stage`` (``None`` without DeepSpeed), ``device``, ``start_step`` (the global
    step the run began at: >0 after a resume), ``global_step``, ``resumed_from``, ``recipe`` and
    ``fused_loss`` (GKD: whether the fused lm_head loss ran; ``None`` for other trainers).
    """

    def __init__(self, trainer, recipe: str | None = None, resumed_from: str | None = None):
        self.trainer, self.recipe, self.resumed_from = trainer, recipe, resumed_from
        self.start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        import torch.distributed as dist

        accelerator = self.trainer.accelerator
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        info = {
            "recipe": self.recipe,
            "world_size": dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1,
            "accelerate_num_processes": accelerator.num_processes,
            "distributed_type": str(accelerator.distributed_type).split(".")[-1],
            "backend": getattr(accelerator.state, "backend", None),
            "zero_stage": plugin.zero_stage if plugin is not None else None,
            "device": str(accelerator.device),
            "start_step": self.start_step,
            "global_step": state.global_step,
            "resumed_from": self.resumed_from,
            "fused_loss": getattr(self.trainer, "use_fused_loss", None),  # GKD: which loss path really ran
        }
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, RUN_INFO_NAME), "w", encoding="utf-8") as handle:
                json.dump(info, handle, indent=2)
        logger.info("run info: %s", info)
