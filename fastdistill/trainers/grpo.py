"""GRPO with rewards from really running the generated tests and an online JSD term to a teacher."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback
from trl import GRPOConfig as _TRLGRPOConfig
from trl import GRPOTrainer as _TRLGRPOTrainer

from fastdistill.losses.fused import fused_jsd_loss
from fastdistill.trainers.utils import backbone as _backbone
from fastdistill.trainers.utils import call_as_forward_of
from fastdistill.trainers.utils import capture_hidden as _capture_hidden
from fastdistill.trainers.utils import frozen_copy
from fastdistill.trainers.utils import output_head as _head

logger = logging.getLogger(__name__)

__all__ = ["GRPOConfig", "GRPOTrainer", "default_reward_funcs"]

REWARD_PRESETS = ("mutant", "speed")


@dataclass
class GRPOConfig(_TRLGRPOConfig):
    """Configuration for :class:`fastdistill.GRPOTrainer`; every TRL ``GRPOConfig`` field keeps its meaning.

    Args:
        jsd_lambda (`float`, defaults to `0.0`):
            Weight of the online generalized JSD between the policy and the teacher over the completion
            tokens, added to TRL's GRPO loss. ``0`` gives exactly TRL's loss.
        jsd_beta (`float`, defaults to `0.5`):
            Interpolation of the JSD (``0``: KL(teacher || policy), ``1``: KL(policy || teacher)).
        teacher_model_name_or_path (`str`, *optional*):
            Teacher for the JSD term. ``None`` uses the reference model: TRL's own ``ref_model`` when
            ``beta > 0`` (its forward pass is reused), the base model with adapters disabled under PEFT, or
            a frozen copy of the initial policy otherwise.
        teacher_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` of the teacher.
        reward_preset (`str`, defaults to `"mutant"`):
            Composite reward used when no ``reward_funcs`` are passed: ``"mutant"`` (strongest tests: kill
            rate first) or ``"speed"`` (fast, stable tests). The two GRPO branches differ only by this and
            their sampling settings.
        code_column (`str`, defaults to `"code"`):
            Dataset column with the code under test, passed to the reward functions.
    """

    jsd_lambda: float = field(default=0.0, metadata={"help": "Weight of the online JSD-to-teacher term."})
    jsd_beta: float = field(default=0.5, metadata={"help": "Interpolation of the generalized JSD term."})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher for the JSD term (default: the reference model)."}
    )
    teacher_model_init_kwargs: dict | str | None = field(
        default=None, metadata={"help": "from_pretrained kwargs for the teacher."}
    )
    reward_preset: str = field(default="mutant", metadata={"help": "Composite reward preset: 'mutant' or 'speed'."})
    code_column: str = field(default="code", metadata={"help": "Dataset column holding the code under test."})

    def __post_init__(self):
        super().__post_init__()
        if self.jsd_lambda < 0:
            raise ValueError(f"jsd_lambda must be >= 0, got {self.jsd_lambda}")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ValueError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}")
        if self.reward_preset not in REWARD_PRESETS:
            raise ValueError(f"reward_preset must be one of {REWARD_PRESETS}, got {self.reward_preset!r}")


def default_reward_funcs(preset: str, code_column: str = "code") -> list:
    """The reward functions of a preset: the composite reward that really runs the generated tests."""
    from fastdistill.rewards import composite_reward

    return [composite_reward(preset=preset, code_column=code_column)]


class _CloseSandboxWorkers(TrainerCallback):
    """The reward functions keep sandbox workers warm between steps; stop them when training ends."""

    def on_train_end(self, args, state, control, **kwargs):
        from fastdistill.rewards import close_idle_workers

        close_idle_workers()


class GRPOTrainer(_TRLGRPOTrainer):
    """TRL's ``GRPOTrainer`` with test-execution rewards by default and an online JSD term to a teacher.

    * ``reward_funcs=None`` uses the composite reward preset named by ``args.reward_preset``; the
      composite logs its components (kill rate, speed, robustness) as their own metrics, runs all
      of a step's sandbox work in one call over warm workers (kept between steps, stopped when
      training ends).
    * With ``args.jsd_lambda > 0`` the loss gains ``jsd_lambda * JSD_beta(policy || teacher)`` averaged
      over completion tokens, logged as ``jsd``. The policy's hidden states are taken from the forward
      pass TRL already makes for the GRPO loss, the teacher's from the reference-model forward when TRL
      makes one; the divergence runs through :func:`fastdistill.losses.fused_jsd_loss`, so no
      ``[tokens, vocab]`` logits are materialised. Under DeepSpeed ZeRO-3 the loss runs as the policy
      head's forward, so DeepSpeed gathers the partitioned head weights once per step (not per chunk).
    * With ``jsd_lambda = 0`` the trainer is TRL's.
    """

    _tag_names = ["trl", "grpo", "fastdistill"]

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, teacher_model=None, **kwargs):
        if args is None:
            raise ValueError("pass a fastdistill.GRPOConfig as `args`")
        if reward_funcs is None:
            reward_funcs = default_reward_funcs(args.reward_preset, args.code_column)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self.add_callback(_CloseSandboxWorkers())
        self.jsd_lambda, self.jsd_beta = float(args.jsd_lambda), float(args.jsd_beta)
        self.teacher_model = None
        self._teacher_is_ref = False
        self._teacher_disables_adapter = False
        if self.jsd_lambda > 0:
            self._setup_teacher(teacher_model, args)

    # -------------------------------------------------------------------------------------------
    def _setup_teacher(self, teacher_model, args):
        from transformers import AutoModelForCausalLM
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

        from trl.models import prepare_deepspeed
        from trl.trainer.utils import disable_dropout_in_model

        self._zero3 = bool(self.is_deepspeed_enabled and is_deepspeed_zero3_enabled())
        if teacher_model is None and args.teacher_model_name_or_path:
            teacher_model = args.teacher_model_name_or_path
        if isinstance(teacher_model, str):
            teacher_model = AutoModelForCausalLM.from_pretrained(teacher_model, **(args.teacher_model_init_kwargs or {}))
        if teacher_model is None:
            if self.ref_model is not None:  # TRL's reference model (beta > 0): reuse its forward
                self.teacher_model, self._teacher_is_ref = self.ref_model, True
                return
            unwrapped = self.accelerator.unwrap_model(self.model)
            if hasattr(unwrapped, "disable_adapter"):  # PEFT: the base model is the reference
                self.teacher_model, self._teacher_disables_adapter = self.model, True
                return
            teacher_model = frozen_copy(unwrapped)  # frozen copy of the initial policy (own weights)
        if teacher_model.config.get_text_config().vocab_size != self.model.config.get_text_config().vocab_size:
            raise ValueError("the teacher and the policy must share a vocabulary for the JSD term")
        teacher_model.requires_grad_(False)
        if args.disable_dropout:
            disable_dropout_in_model(teacher_model)
        if self.is_deepspeed_enabled:
            self.teacher_model = prepare_deepspeed(teacher_model, self.accelerator)
        else:
            self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)

    @torch.no_grad()
    def _teacher_hidden_states(self, input_ids, attention_mask) -> torch.Tensor:
        """Hidden states of the teacher over a prompt+completion batch (own forward, no logits)."""
        if self._teacher_disables_adapter:
            unwrapped = self.accelerator.unwrap_model(self.model)
            with unwrapped.disable_adapter():
                return _backbone(self.model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        self.teacher_model.eval()
        return _backbone(self.teacher_model)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def _generate_and_score_completions(self, inputs):
        if self.jsd_lambda == 0:
            return super()._generate_and_score_completions(inputs)
        captured: list[torch.Tensor] = []
        reuse_ref = self._teacher_is_ref and self.beta != 0.0
        with _capture_hidden(_backbone(self.teacher_model), captured) if reuse_ref else contextlib.nullcontext():
            output = super()._generate_and_score_completions(inputs)
        completion_len = output["completion_ids"].size(1)
        if captured:  # TRL's reference forward ran (in chunks of the batch): reuse it
            hidden = torch.cat([h.detach() for h in captured], dim=0)
        else:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            hidden = self._teacher_hidden_states(input_ids, attention_mask)
        # position i predicts token i + 1: the completion is predicted from positions [L-K-1, L-1)
        output["teacher_hidden"] = hidden[:, -completion_len - 1 : -1].contiguous()
        return output

    def _compute_loss(self, model, inputs):
        if self.jsd_lambda == 0:
            return super()._compute_loss(model, inputs)
        captured: list[torch.Tensor] = []
        with _capture_hidden(_backbone(model), captured):
            loss = super()._compute_loss(model, inputs)
        completion_len = inputs["completion_ids"].size(1)
        student_hidden = torch.cat(captured, dim=0)[:, -completion_len - 1 : -1]
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        jsd = self._jsd(model, student_hidden, inputs["teacher_hidden"], mask)
        mode = "train" if self.model.training else "eval"
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        self._metrics[mode]["jsd"].append(self.accelerator.gather(jsd.detach()).mean().item())
        return loss + self.jsd_lambda * jsd / normalizer

    def _jsd(self, model, student_hidden, teacher_hidden, mask) -> torch.Tensor:
        student_head = _head(model)
        teacher_head = _head(self.model if self._teacher_disables_adapter else self.teacher_model)

        def head_jsd(student_hidden):
            return {"jsd": fused_jsd_loss(
                student_hidden,
                student_head.weight,
                teacher_hidden.to(student_hidden.dtype),
                teacher_head.weight.detach(),
                beta=self.jsd_beta,
                mask=mask,
                student_bias=student_head.bias,
                teacher_bias=None if teacher_head.bias is None else teacher_head.bias.detach(),
                reduction="mean",
            )}

        if getattr(self, "_zero3", False):
            # partitioned heads: run the fused loss as the policy head's forward so DeepSpeed gathers its
            # weights once (and the teacher head's, which needs no gradient, for the duration of the call)
            teacher_params = [] if teacher_head is student_head else list(teacher_head.parameters())
            return call_as_forward_of(student_head, head_jsd, student_hidden, gathered=teacher_params)["jsd"]
        return head_jsd(student_hidden)["jsd"]
