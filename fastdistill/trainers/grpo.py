"""GRPO with rewards from really running the generated tests and an online JSD term to a teacher."""

from __future__ import annotations

import contextlib
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
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
from fastdistill.trainers.utils import zero3_enabled

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
            a frozen copy of the initial policy otherwise (under DeepSpeed ZeRO-3, whose parameters are
            partitioned, the policy reloaded from its checkpoint, as TRL builds its reference model).
        teacher_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for ``AutoModelForCausalLM.from_pretrained`` of the teacher.
        reward_preset (`str`, defaults to `"mutant"`):
            Composite reward used when no ``reward_funcs`` are passed: ``"mutant"`` (strongest tests: kill
            rate first) or ``"speed"`` (fast, stable tests). The two GRPO branches differ only by this and
            their sampling settings.
        code_column (`str`, defaults to `"code"`):
            Dataset column with the code under test, passed to the reward functions.
        overlap_teacher_forward (`bool`, *optional*):
            Run the teacher's forward pass for the JSD term on a background thread while the reward
            functions score the batch, instead of after them. The result is checked against the batch TRL
            builds and recomputed if it differs, so losses are identical either way. ``None`` (default):
            on when the teacher runs on an accelerator (its forward then uses the GPU while the test
            sandbox uses the CPU cores), off on CPU, where both would compete for the same cores. Never
            used under DeepSpeed ZeRO-3 (the teacher's forward gathers weights collectively) or when the
            teacher is the policy with adapters off.
        sandbox (`dict` or `str`, *optional*):
            Settings of the test sandbox the default reward functions run in: a mapping (or, on the command
            line, a JSON object) of ``fastdistill.rewards.SandboxSettings`` fields, e.g.
            ``{"memory_mb": 512, "max_mutants": 10, "workers": 4}``; unset fields keep their defaults.
    """

    # like TRL's own dict fields: a JSON string from the command line becomes a dict in __post_init__
    _VALID_DICT_FIELDS = _TRLGRPOConfig._VALID_DICT_FIELDS + ["teacher_model_init_kwargs"]

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
    overlap_teacher_forward: bool | None = field(
        default=None, metadata={"help": "Run the teacher forward for the JSD term while the rewards are computed "
                                        "(default: when the teacher is on an accelerator)."}
    )
    sandbox: dict | str | None = field(
        default=None, metadata={"help": "Test sandbox settings for the default rewards: a JSON object of "
                                        "fastdistill.rewards.SandboxSettings fields, e.g. '{\"memory_mb\": 512}'."}
    )

    def __post_init__(self):
        super().__post_init__()
        from fastdistill.validation import Problems

        p = Problems("GRPOConfig")  # every problem of our fields at once; NaN / inf refused
        p.number(self.jsd_lambda, "jsd_lambda", minimum=0.0)
        p.number(self.jsd_beta, "jsd_beta", minimum=0.0, maximum=1.0)
        p.choice(self.reward_preset, "reward_preset", REWARD_PRESETS)
        p.type(self.code_column, "code_column", str)
        p.raise_if_any()
        if self.sandbox is not None:  # validated now (unknown or bad fields fail here, not at the first step)
            from fastdistill.rewards import SandboxSettings

            self.sandbox = SandboxSettings.coerce(self.sandbox).to_dict()


def default_reward_funcs(preset: str, code_column: str = "code", sandbox: dict | None = None) -> list:
    """The reward functions of a preset: the composite reward that really runs the generated tests."""
    from fastdistill.rewards import composite_reward

    return [composite_reward(preset=preset, code_column=code_column, sandbox=sandbox)]


def _shared_prefix_forward(backbone, input_ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """``backbone(input_ids, attention_mask).last_hidden_state``, running each distinct prompt (the first
    ``prompt_len`` columns, ids and mask) once and the rest of every row on top of its prompt's KV cache.

    Equal to the plain forward up to floating-point rounding (position ids are ``arange`` in both, the
    causal mask covers the cached prefix). Falls back to the plain forward when no prompt repeats or
    the model's cache cannot be re-indexed.
    """
    batch = input_ids.size(0)
    if 0 < prompt_len < input_ids.size(1) and batch > 1:
        prefix = torch.cat([input_ids[:, :prompt_len], attention_mask[:, :prompt_len].to(input_ids.dtype)], dim=1)
        unique, inverse = torch.unique(prefix, dim=0, return_inverse=True)
        if unique.size(0) < batch:
            try:
                # transformers >= 5.24 names the cache argument and output `cache` (was `past_key_values`)
                name = "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"
                head = backbone(input_ids=unique[:, :prompt_len], attention_mask=unique[:, prompt_len:],
                                use_cache=True)
                cache = getattr(head, name, None)
                cache = head.past_key_values if cache is None else cache
                cache.batch_select_indices(inverse)
                tail = backbone(input_ids=input_ids[:, prompt_len:], attention_mask=attention_mask,
                                use_cache=False, **{name: cache})
                return torch.cat([head.last_hidden_state[inverse], tail.last_hidden_state], dim=1)
            except (AttributeError, NotImplementedError, TypeError, ValueError):  # a cache we cannot share
                logger.debug("shared-prefix teacher forward not possible; running the full batch", exc_info=True)
    return backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


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
            reward_funcs = default_reward_funcs(args.reward_preset, args.code_column, args.sandbox)
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        self.add_callback(_CloseSandboxWorkers())
        self.jsd_lambda, self.jsd_beta = float(args.jsd_lambda), float(args.jsd_beta)
        self.teacher_model = None
        self._teacher_is_ref = False
        self._teacher_disables_adapter = False
        self._teacher_pool = None  # background thread for the teacher forward (overlap_teacher_forward)
        self._generated = None  # the last _generate's (prompt_ids, completion_ids) lists, for that forward
        self._teacher_future = None
        if self.jsd_lambda > 0:
            self._setup_teacher(teacher_model, args)
            overlap = args.overlap_teacher_forward
            if overlap is None:
                overlap = next(self.teacher_model.parameters()).device.type != "cpu"
            if overlap and not self._zero3 and not self._teacher_is_ref and not self._teacher_disables_adapter:
                self._teacher_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fastdistill-teacher")

    @property
    def _zero3(self) -> bool:
        """DeepSpeed ZeRO-3: parameters are partitioned (the heads must be gathered, models cannot be copied)."""
        return zero3_enabled(self)

    # -------------------------------------------------------------------------------------------
    def _setup_teacher(self, teacher_model, args):
        from transformers import AutoModelForCausalLM

        from trl.models import prepare_deepspeed
        from trl.trainer.utils import disable_dropout_in_model

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
            if self._zero3:  # partitioned parameters cannot be copied: reload, as TRL builds its reference model
                teacher_model = self._initial_policy_from_checkpoint(args)
            else:
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

    def _initial_policy_from_checkpoint(self, args):
        """The policy reloaded from its checkpoint, with the keyword arguments TRL uses for its reference model."""
        from trl.trainer.utils import create_model_from_path, get_config_model_id

        path = get_config_model_id(self.model.config)
        if not path:
            raise ValueError("under DeepSpeed ZeRO-3 the default JSD teacher is the policy reloaded from its checkpoint, "
                             "but the policy has no name_or_path: pass `teacher_model` or "
                             "`teacher_model_name_or_path`")
        kwargs = dict(args.model_init_kwargs or {})
        kwargs["device_map"] = None
        kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        kwargs.setdefault("dtype", self.model.dtype)
        kwargs.setdefault("attn_implementation", self.model.config._attn_implementation)
        return create_model_from_path(path, **kwargs)

    @torch.no_grad()
    def _teacher_hidden_states(self, input_ids, attention_mask, prompt_len: int = 0) -> torch.Tensor:
        """Hidden states of the teacher over a prompt+completion batch (own forward, no logits).

        GRPO samples ``num_generations`` completions per prompt, so the batch repeats each prompt; with
        ``prompt_len`` the teacher runs each distinct prompt once (its KV cache is then shared by the
        rows of that prompt) and only the completions on top, instead of every prompt G times.
        """
        if self._teacher_disables_adapter:
            unwrapped = self.accelerator.unwrap_model(self.model)
            with unwrapped.disable_adapter():
                return _shared_prefix_forward(_backbone(self.model), input_ids, attention_mask, prompt_len)
        self.teacher_model.eval()
        return _shared_prefix_forward(_backbone(self.teacher_model), input_ids, attention_mask, prompt_len)

    # -- overlap of the teacher forward with the reward functions ---------------------------------
    def _generate(self, prompts):
        out = super()._generate(prompts)
        if self._teacher_pool is not None:
            self._generated = (out[0], out[1])
        return out

    def _padded_batch(self, prompt_ids_list, completion_ids_list):
        """Prompt+completion ids, attention mask and padded prompt length, as TRL's
        ``_generate_and_score_completions`` pads them."""
        from trl.trainer.utils import pad

        device, multiple = self.accelerator.device, self.pad_to_multiple_of
        pad_id = self._tokenizer.pad_token_id
        prompts = [torch.tensor(ids) for ids in prompt_ids_list]
        completions = [torch.tensor(ids) for ids in completion_ids_list]
        prompt_ids = pad(prompts, padding_value=pad_id, padding_side="left", pad_to_multiple_of=multiple)
        prompt_mask = pad([torch.ones_like(t, dtype=torch.long) for t in prompts], padding_value=0,
                          padding_side="left", pad_to_multiple_of=multiple)
        completion_ids = pad(completions, padding_value=pad_id, padding_side="right", pad_to_multiple_of=multiple)
        completion_mask = pad([torch.ones_like(t, dtype=torch.long) for t in completions], padding_value=0,
                              padding_side="right", pad_to_multiple_of=multiple)
        if self.mask_truncated_completions:
            eos_and_pad = [*self.eos_token_ids, pad_id]
            truncated = torch.tensor([ids[-1] not in eos_and_pad for ids in completion_ids_list])
            completion_mask = completion_mask * (~truncated).unsqueeze(1).int()
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1).to(device)
        return input_ids, torch.cat([prompt_mask, completion_mask], dim=1).to(device), prompt_ids.size(1)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        generated, self._generated = self._generated, None
        if self._teacher_pool is not None and generated is not None:
            try:
                input_ids, attention_mask, prompt_len = self._padded_batch(*generated)
            except Exception:  # noqa: BLE001 - an unusual batch: the teacher forward runs afterwards instead
                logger.debug("teacher forward not overlapped", exc_info=True)
            else:
                self._teacher_future = (input_ids, attention_mask, self._teacher_pool.submit(
                    self._teacher_hidden_states, input_ids, attention_mask, prompt_len))
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        if self.jsd_lambda == 0:
            return super()._generate_and_score_completions(inputs)
        captured: list[torch.Tensor] = []
        reuse_ref = self._teacher_is_ref and self.beta != 0.0
        self._teacher_future = None
        try:
            with _capture_hidden(_backbone(self.teacher_model), captured) if reuse_ref else contextlib.nullcontext():
                output = super()._generate_and_score_completions(inputs)
        finally:  # the background forward is never left running
            pending, self._teacher_future, early = self._teacher_future, None, None
            if pending is not None:
                try:
                    early = pending[2].result()
                except Exception:  # noqa: BLE001 - recomputed below on the main thread
                    logger.warning("background teacher forward failed; recomputing it", exc_info=True)
        completion_len = output["completion_ids"].size(1)
        if captured:  # TRL's reference forward ran (in chunks of the batch): reuse it
            hidden = torch.cat([h.detach() for h in captured], dim=0)
        else:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            if early is not None and torch.equal(pending[0], input_ids) and torch.equal(pending[1], attention_mask):
                hidden = early  # computed while the rewards ran, on exactly this batch
            else:
                hidden = self._teacher_hidden_states(input_ids, attention_mask, output["prompt_ids"].size(1))
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

        if self._zero3:
            # partitioned heads: run the fused loss as the policy head's forward so DeepSpeed gathers its
            # weights once (and the teacher head's, which needs no gradient, for the duration of the call)
            teacher_params = [] if teacher_head is student_head else list(teacher_head.parameters())
            return call_as_forward_of(student_head, head_jsd, student_hidden, gathered=teacher_params)["jsd"]
        return head_jsd(student_hidden)["jsd"]
