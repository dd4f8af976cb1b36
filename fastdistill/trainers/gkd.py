"""GKD with a weighted CE + generalized JSD + reverse KL loss, with or without a live teacher."""

from __future__ import annotations

import logging
import random
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fastdistill.data.collators import DistillationCollator, tokenize_example
from fastdistill.losses import jsd_loss, reverse_kl_on_chosen, reverse_kl_on_logits
from fastdistill.losses.fused import fused_chunk_size, fused_jsd_loss, fused_reverse_kl_on_chosen
from fastdistill.losses.partition import topk_partition_loss
from fastdistill.trainers.served import (
    ServedTeacherArguments,
    batch_rows,
    build_served_teacher,
    score_tensors,
    wants_served_teacher,
)
from fastdistill.trainers.utils import (
    backbone,
    call_as_forward_of,
    capture_hidden,
    output_head,
    unfusable_reason,
    zero3_enabled,
)

with warnings.catch_warnings():  # TRL 1.16 keeps GKD under trl.experimental and warns on import
    warnings.simplefilter("ignore")
    try:
        from trl.experimental.gkd import GKDConfig as _TRLGKDConfig
        from trl.experimental.gkd import GKDTrainer as _TRLGKDTrainer
    except ImportError:  # older / future TRL layouts
        from trl import GKDConfig as _TRLGKDConfig  # type: ignore[no-redef]
        from trl import GKDTrainer as _TRLGKDTrainer  # type: ignore[no-redef]
from trl import SFTTrainer as _TRLSFTTrainer

logger = logging.getLogger(__name__)

__all__ = ["GKDConfig", "GKDTrainer"]

OFFLINE_COLUMNS = ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")


@dataclass
class GKDConfig(_TRLGKDConfig, ServedTeacherArguments):
    """Configuration for :class:`fastdistill.GKDTrainer`; every TRL ``GKDConfig`` field keeps its meaning.

    ``teacher_model_name_or_path`` may be a served teacher's base URL (``http://host:8000/v1``); the
    ``teacher_*`` server fields (``teacher_server_model``, ``teacher_top_k``, ``teacher_timeout_s``,
    ``teacher_max_concurrency``, ``teacher_max_retries``, ``teacher_max_failed_fraction``) are documented
    in :class:`fastdistill.trainers.served.ServedTeacherArguments`.

    The loss is ``ce_lambda * CE + jsd_lambda * JSD_beta + rkl_lambda * RKL``; each term is logged
    separately (``loss/ce``, ``loss/jsd``, ``loss/rkl``). With the defaults and a live teacher the loss
    is exactly TRL's GKD loss.

    Args:
        ce_lambda (`float`, defaults to `0.0`):
            Weight of the token cross-entropy on the dataset's completion tokens (the SFT signal).
        jsd_lambda (`float` or `None`, defaults to `None`):
            Weight of the generalized JSD (``beta`` as in TRL) to a live teacher. ``None`` means 1.0 with a
            teacher and 0.0 without one (the JSD needs the teacher's full distribution).
        rkl_lambda (`float` or `None`, defaults to `None`):
            Weight of the reverse KL(student || teacher). With a live teacher it is the exact
            full-vocabulary reverse KL; without one it is computed from the dataset's ``teacher_logprobs``
            (or top-k) columns by ``reverse_kl_on_chosen``. ``None`` means 0.0 with a teacher and 1.0
            without one.
        fused_loss (`bool`, defaults to `True`):
            Compute the divergences from hidden states and ``lm_head`` weights with
            :func:`~fastdistill.losses.fused_jsd_loss` / ``fused_reverse_kl_on_chosen``: neither model's
            ``[tokens, vocab]`` logits are ever materialised (the teacher's ``lm_head`` is never applied to
            the sequence). Falls back to the logits path, with one warning saying why, for heads it cannot
            fuse (logit soft-capping or scaling, a head that is not a plain ``nn.Linear``). Under DeepSpeed
            ZeRO-3 the losses run as the student head's forward, so DeepSpeed gathers the partitioned head
            weights once per step (and once for its backward), not once per chunk.
    """

    ce_lambda: float = field(default=0.0, metadata={"help": "Weight of the token cross-entropy term."})
    jsd_lambda: float | None = field(
        default=None, metadata={"help": "Weight of the generalized JSD term (default: 1 with a teacher, else 0)."}
    )
    rkl_lambda: float | None = field(
        default=None, metadata={"help": "Weight of the reverse-KL term (default: 0 with a teacher, else 1)."}
    )
    fused_loss: bool = field(
        default=True, metadata={"help": "Fuse the lm_head projection into the losses (never build the logits)."}
    )

    def __post_init__(self):
        super().__post_init__()
        from fastdistill.validation import Problems

        p = Problems("GKDConfig")
        for name in ("ce_lambda", "jsd_lambda", "rkl_lambda"):
            p.number(getattr(self, name), name, minimum=0.0, optional=name != "ce_lambda")
        p.raise_if_any()


@dataclass
class _Window:
    """Served-teacher bookkeeping of one optimisation step (its micro-batches share it)."""

    left: int
    rows: int = 0
    failed: int = 0
    sampled: int = 0  # seq_kd: rows the teacher is asked to sample in this step
    samples_failed: int = 0
    wait_s: float = 0.0  # time the trainer blocked on the server
    latency_s: float = 0.0  # longest time from a batch's requests to its last answer


@dataclass
class _ServedBatch:
    """A micro-batch's requests in flight, carried in its inputs until the loss needs them."""

    pending: object
    rows: list
    positions: list
    window: _Window


def _to_prompt_completion(example: dict) -> dict:
    """Split TRL's ``messages`` format into prompt/completion (the last message is the answer)."""
    if "prompt" in example and "completion" in example:
        return {}
    messages = example.get("messages")
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("each row needs prompt/completion columns, or a messages list ending with the assistant's "
                         "answer")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


class GKDTrainer(_TRLGKDTrainer):
    """TRL's ``GKDTrainer`` with a weighted CE + JSD + reverse-KL loss and a teacher-free path.

    * With ``teacher_model`` (a model or a path; or ``args.teacher_model_name_or_path``): TRL's GKD,
      including on-policy ``lmbda`` and ``seq_kd``; the divergences come from
      :mod:`fastdistill.losses`, which are chunked over tokens so their extra memory is bounded.
    * With a served teacher (an ``http(s)://`` base URL or an ``OpenAIServerTeacher``): no teacher weights
      in memory; the server scores every row (top-k log-probs) and, with ``seq_kd``, samples the
      off-policy micro-batches' completions (see :meth:`get_batch_samples`).
    * Without a teacher, when the dataset has ``teacher_logprobs`` (one log-prob per completion token)
      or ``teacher_topk_ids``/``teacher_topk_logprobs`` columns: trains from those columns through
      :func:`~fastdistill.losses.reverse_kl_on_chosen`. Generated completions have no stored teacher
      log-probs, so this path needs ``lmbda=0`` and ``seq_kd=False``.

    The dataset is ``prompt``/``completion`` (strings or chat messages) or ``messages``; it is
    tokenized once up front, which checks that every teacher column has exactly one entry per
    completion token and raises a ``ValueError`` naming the first bad row otherwise.
    """

    _tag_names = ["trl", "gkd", "fastdistill"]

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: GKDConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        peft_config=None,
        **kwargs,
    ):
        if args is None:
            raise ValueError("pass a fastdistill.GKDConfig as `args`")
        if teacher_model is None and args.teacher_model_name_or_path:
            teacher_model = args.teacher_model_name_or_path
        if processing_class is None:
            from transformers import AutoTokenizer

            name = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(name)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token

        self.served = None
        served = wants_served_teacher(teacher_model)
        self.offline = teacher_model is None
        if self.offline:
            columns = set(train_dataset.column_names) if train_dataset is not None else set()
            if not columns & set(OFFLINE_COLUMNS):
                raise ValueError(
                    "GKDTrainer needs a teacher: pass `teacher_model` (or set `teacher_model_name_or_path`), or a "
                    "dataset with a 'teacher_logprobs' column (or 'teacher_topk_ids' + 'teacher_topk_logprobs')"
                )
            if args.lmbda > 0 or args.seq_kd:
                raise ValueError(
                    "without a live teacher there are no teacher log-probs for generated completions: set lmbda=0 "
                    f"and seq_kd=False (got lmbda={args.lmbda}, seq_kd={args.seq_kd})"
                )
        self.ce_lambda = float(args.ce_lambda)
        self.jsd_lambda = float(args.jsd_lambda if args.jsd_lambda is not None else (0.0 if self.offline else 1.0))
        self.rkl_lambda = float(args.rkl_lambda if args.rkl_lambda is not None else (1.0 if self.offline else 0.0))
        if self.offline and self.jsd_lambda > 0:
            raise ValueError("jsd_lambda > 0 needs a live teacher (the JSD uses its full distribution); "
                             "set jsd_lambda=0")
        if self.ce_lambda + self.jsd_lambda + self.rkl_lambda == 0:
            raise ValueError("ce_lambda, jsd_lambda and rkl_lambda are all 0: nothing to train")

        from fastdistill.data.loading import check_teacher_columns

        check_teacher_columns(train_dataset, "train")  # NaN teacher log-probs would make every weight NaN
        for split, ds in (eval_dataset.items() if isinstance(eval_dataset, dict) else [("eval", eval_dataset)]):
            check_teacher_columns(ds, split)
        train_dataset = self._tokenize(train_dataset, processing_class, args.max_length, "train")
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: self._tokenize(v, processing_class, args.max_length, k) for k, v in eval_dataset.items()}
        else:
            eval_dataset = self._tokenize(eval_dataset, processing_class, args.max_length, "eval")
        if data_collator is None:
            data_collator = DistillationCollator(processing_class, max_length=args.max_length)

        common = dict(
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        if not self.offline and not served:
            super().__init__(model, teacher_model, **common)
            return
        # No teacher in memory: TRL's GKDTrainer.__init__ requires one, so set up the SFTTrainer base directly
        # and the few GKD attributes the rest of the class reads.
        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        _TRLSFTTrainer.__init__(self, model, **common)
        if args.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            disable_dropout_in_model(self.model)
        self.teacher_model = None
        self.lmbda, self.beta, self.temperature, self.seq_kd = args.lmbda, args.beta, args.temperature, args.seq_kd
        self.generation_config = self.generation_kwargs = None
        if served:
            self._setup_generation(args)
            self.served = build_served_teacher(teacher_model, args, processing_class, self._probe_texts(train_dataset))

    def _setup_generation(self, args):
        """TRL's generation settings for on-policy batches (as TRL's GKDTrainer.__init__ sets them)."""
        from transformers import GenerationConfig

        self.generation_kwargs = {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "do_sample": True,
            "top_k": 0,
            "top_p": 1.0,
            "use_cache": not args.gradient_checkpointing,
            "pad_token_id": self.processing_class.pad_token_id,
        }
        self.generation_config = GenerationConfig(**self.generation_kwargs)
        if getattr(self.model.generation_config, "eos_token_id", None) is not None:
            self.generation_config.eos_token_id = self.model.generation_config.eos_token_id

    def _probe_texts(self, dataset) -> list[str]:
        """A few prompts of the data, decoded, for the server's tokenizer probe."""
        if dataset is None or "prompt_ids" not in dataset.column_names:
            return []
        return [self.processing_class.decode(ids) for ids in dataset.select(range(min(2, len(dataset))))["prompt_ids"]]

    @staticmethod
    def _tokenize(dataset, tokenizer, max_length, name):
        if dataset is None or "completion_ids" in dataset.column_names:
            return dataset
        if "prompt" not in dataset.column_names or "completion" not in dataset.column_names:
            dataset = dataset.map(_to_prompt_completion, desc=f"Splitting {name} messages")

        def tokenize(example, index):
            return tokenize_example(example, tokenizer, max_length, index=index)

        return dataset.map(tokenize, with_indices=True, desc=f"Tokenizing {name} dataset")

    # ------------------------------------------------------------------------------------------
    def _fusion_blocker(self) -> str | None:
        """Why the fused path cannot run for this trainer (``None`` if it can); decided once."""
        for name, model in (("student", self.model), ("teacher", self.teacher_model)):
            if model is not None:
                reason = unfusable_reason(model)
                if reason is not None:
                    return f"the {name} cannot be fused: {reason}"
        return None

    @property
    def _zero3(self) -> bool:
        """DeepSpeed ZeRO-3: the heads' weights are partitioned and must be gathered to be read."""
        return zero3_enabled(self)

    @property
    def use_fused_loss(self) -> bool:
        """Whether :meth:`compute_loss` takes the fused (hidden states + lm_head weight) path."""
        if not hasattr(self, "_fused_decision"):
            reason = self._fusion_blocker() if self.args.fused_loss else None
            if reason is not None:
                logger.warning("fused_loss=True but falling back to the logits path: %s", reason)
            self._fused_decision = bool(self.args.fused_loss) and reason is None
        return self._fused_decision

    @staticmethod
    def _hidden_states(model, inputs) -> tuple[torch.Tensor, object]:
        """Final hidden states of ``model`` on the batch, without applying its lm_head to the sequence.

        The wrapped model is called (so DDP / DeepSpeed hooks run) with ``logits_to_keep=1``: the head
        projects one position per row, and the backbone's output is captured by a forward hook.
        """
        store: list[torch.Tensor] = []
        with capture_hidden(backbone(model), store):
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=1)
        return store[-1], outputs

    def training_step(self, model, inputs, num_items_in_batch=None):
        if inputs.pop("_fd_prepared", False):
            # served teacher: the batch was generated (and sent to the server) in get_batch_samples, and
            # num_items_in_batch counts its generated tokens: skip TRL's generation, keep the rest
            self._collated_labels = inputs.get("labels")
            return super(_TRLGKDTrainer, self).training_step(model, inputs, num_items_in_batch)
        # Remember the collated labels: TRL's on-policy (``lmbda``) and ``seq_kd`` steps replace them with
        # generated completions *after* the Trainer counted ``num_items_in_batch`` on the originals.
        self._collated_labels = inputs.get("labels")
        return super().training_step(model, inputs, num_items_in_batch)

    # -- served teacher ---------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """With a served teacher: generate every micro-batch of the accumulation window up front and send each
        one's rows to the server as soon as its completions exist, so micro-batch i trains while the server
        scores the rest. Strictly on-policy: the completions are the current policy's, scored in this step.
        With ``seq_kd``, the micro-batches TRL's ``lmbda`` draw leaves off-policy get the teacher's own samples
        instead of the dataset's completions: all their sampling requests go out first, concurrently, while
        the student generates the on-policy ones; each is then scored like any other row."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.served is None or not batch_samples:
            return batch_samples, num_items_in_batch
        window = _Window(left=len(batch_samples))
        on_policy = [random.random() <= self.lmbda for _ in batch_samples]  # TRL's draw, once per micro-batch
        # seq_kd: the teacher writes the off-policy micro-batches' completions; every request goes out now
        samples = {i: self._submit_teacher_samples(inputs) for i, inputs in enumerate(batch_samples)
                   if self.seq_kd and not on_policy[i]}
        window.sampled = sum(len(pending.futures) for pending in samples.values())  # every sample the step asks for
        for i, inputs in enumerate(batch_samples):
            if on_policy[i]:
                self._generate_into(inputs)
            elif i in samples:
                self._teacher_samples_into(inputs, samples[i], window)
            inputs["_fd_prepared"] = True
            if not self._has_stored_teacher(inputs):
                rows, positions = batch_rows(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
                window.rows += sum(r is not None for r in rows)
                pending = self.served.submit([r for r in rows if r is not None])
                # an object, not a tuple/dict: the Trainer's device placement copies containers (and the window
                # with them)
                inputs["_served"] = _ServedBatch(pending, rows, positions, window)
        if num_items_in_batch is not None:
            num_items_in_batch = self._get_num_items_in_batch(batch_samples, device)
        return batch_samples, num_items_in_batch

    def _generate_into(self, inputs) -> None:
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs) as unwrapped:
            ids, mask, labels = self.generate_on_policy_outputs(unwrapped, inputs, self.generation_config)
        inputs["input_ids"], inputs["attention_mask"], inputs["labels"] = ids, mask, labels

    def _submit_teacher_samples(self, inputs):
        """Send the micro-batch's prompts to the served teacher for sampling (sequence-level KD)."""
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(inputs["prompts"], inputs["prompt_attention_mask"])]
        return self.served.submit_samples(prompts, self.generation_config.max_new_tokens, self.temperature)

    def _teacher_samples_into(self, inputs, pending, window) -> None:
        """Replace the micro-batch's completions with the teacher's samples, laid out as TRL's
        ``generate_on_policy_outputs`` lays out generated sequences (left-padded prompt, then the completion,
        the labels -100 on prompt and padding). A row the teacher could not sample is left out of the step
        (no completion tokens: no CE and no divergence for it), counted in ``teacher/failed_samples``."""
        results = pending.results()
        window.samples_failed += sum(isinstance(r, BaseException) for r in results)
        self.served.account(results, window.sampled, window.samples_failed, sampled=True)
        prompts, prompt_mask = inputs["prompts"], inputs["prompt_attention_mask"]
        completions = [[] if isinstance(r, BaseException) else r for r in results]
        width = max(1, max(len(c) for c in completions))
        pad = self.processing_class.pad_token_id
        completion = torch.full((len(completions), width), pad, dtype=prompts.dtype, device=prompts.device)
        completion_mask = torch.zeros_like(completion, dtype=prompt_mask.dtype)
        for b, ids in enumerate(completions):
            completion[b, : len(ids)] = torch.tensor(ids, dtype=prompts.dtype)
            completion_mask[b, : len(ids)] = 1
        input_ids = torch.cat([prompts, completion], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        labels = input_ids.clone()
        labels[attention_mask == 0] = -100
        labels[:, : prompts.shape[1]] = -100
        inputs["input_ids"], inputs["attention_mask"], inputs["labels"] = input_ids, attention_mask, labels

    @staticmethod
    def _has_stored_teacher(inputs) -> bool:
        return any(column in inputs for column in OFFLINE_COLUMNS)

    def _served_scores(self, inputs, mode):
        """Wait for this batch's teacher answers (sent earlier, or now) and turn them into tensors."""
        entry = inputs.pop("_served", None)
        if entry is None:  # evaluation, or a batch that bypassed get_batch_samples
            rows, positions = batch_rows(inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            window = _Window(left=1, rows=sum(r is not None for r in rows))
            entry = _ServedBatch(self.served.submit([r for r in rows if r is not None]), rows, positions, window)
        pending, rows, positions, window = entry.pending, entry.rows, entry.positions, entry.window
        answers = iter(pending.results())
        results = [next(answers) if r is not None else None for r in rows]
        window.failed += sum(isinstance(r, BaseException) for r in results)
        window.wait_s += pending.wait_s
        window.latency_s = max(window.latency_s, pending.latency_s)
        window.left -= 1
        self.served.account([r for r in results if r is not None], window.rows, window.failed)
        if window.left == 0:  # one value per optimisation step
            self._metrics[mode]["teacher/failed_rows"].append(float(window.failed))
            self._metrics[mode]["teacher/wait_s"].append(window.wait_s)
            self._metrics[mode]["teacher/latency_s"].append(window.latency_s)
            if window.sampled:
                self._metrics[mode]["teacher/failed_samples"].append(float(window.samples_failed))
        return score_tensors(results, positions, inputs["labels"][:, 1:], self.served.top_k)

    def _student_and_ce(self, model, inputs, labels, mask, num_items_in_batch):
        """The student's forward, its shifted logits and the CE term (when ``ce_lambda > 0``)."""
        student_outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        student_logits = student_outputs.logits[:, :-1, :]
        terms: dict[str, torch.Tensor] = {}
        if self.ce_lambda > 0:
            ce = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]).float(), labels.reshape(-1),
                                 ignore_index=-100, reduction="sum")
            terms["ce"] = self._normalise(ce, mask, num_items_in_batch)
        return student_outputs, student_logits, terms

    def _served_terms(self, model, inputs, labels, mask, num_items_in_batch):
        """Served teacher: divergences over the partition {teacher's top-k, sampled token, rest}."""
        mode = "train" if model.training else "eval"
        student_outputs, student_logits, terms = self._student_and_ce(model, inputs, labels, mask, num_items_in_batch)
        ids, teacher_lp, listed, row_ok = self._served_scores(inputs, mode)
        scored = mask & row_ok[:, None]
        n_all, n_scored = int(mask.sum()), int(scored.sum())
        if n_scored == 0:  # every row failed: no distillation term this micro-batch (not a zero divergence)
            empty = student_logits.sum() * 0.0
            for name, weight in (("jsd", self.jsd_lambda), ("rkl", self.rkl_lambda)):
                if weight > 0:
                    terms[name] = empty
            return terms, student_outputs
        # failed rows are left out; the divisor shrinks with them so the term stays a per-token average
        items = num_items_in_batch if num_items_in_batch is not None else n_all
        items = items * (n_scored / max(n_all, 1))
        if self.jsd_lambda > 0:
            terms["jsd"] = topk_partition_loss(student_logits, ids, teacher_lp, self.beta, scored, listed, items)
        if self.rkl_lambda > 0:
            terms["rkl"] = topk_partition_loss(student_logits, ids, teacher_lp, 1.0, scored, listed, items)
        return terms, student_outputs

    def _items_for(self, inputs, mask: torch.Tensor, num_items_in_batch):
        """``num_items_in_batch`` for the tokens this loss really covers.

        The Trainer counts the collated completion tokens of the whole accumulation window (across
        processes). When TRL swapped this micro-batch for generated completions, that count no longer
        matches the tokens in the loss (generated completions are usually much shorter, which made
        on-policy losses far too small). The count is then rescaled by generated / collated tokens of
        this micro-batch, which keeps the Trainer's gradient-accumulation and multi-process conventions
        and is exact when every micro-batch of the window is generated with the same length ratio.
        """
        collated = getattr(self, "_collated_labels", None)
        if num_items_in_batch is None or collated is None or inputs["labels"] is collated:
            return num_items_in_batch
        ratio = mask.sum().clamp_min(1).float() / (collated[:, 1:] != -100).sum().clamp_min(1).float()
        if isinstance(num_items_in_batch, torch.Tensor):
            ratio = ratio.to(num_items_in_batch.device)
        return num_items_in_batch * ratio

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"][:, 1:]  # logits at position i predict token i + 1; -100 on prompt and padding
        mask = labels != -100
        num_items_in_batch = self._items_for(inputs, mask, num_items_in_batch)
        if self.served is not None and not self._has_stored_teacher(inputs):
            terms, student_outputs = self._served_terms(model, inputs, labels, mask, num_items_in_batch)
        elif self.use_fused_loss:
            terms, student_outputs = self._fused_terms(model, inputs, labels, mask, num_items_in_batch)
        else:
            terms, student_outputs = self._logit_terms(model, inputs, labels, mask, num_items_in_batch)
        weights = {"ce": self.ce_lambda, "jsd": self.jsd_lambda, "rkl": self.rkl_lambda}
        loss = sum(weights[name] * value for name, value in terms.items())
        mode = "train" if model.training else "eval"
        for name, value in terms.items():
            self._metrics[mode][f"loss/{name}"].append(self.accelerator.gather(value.detach()).mean().item())
        return (loss, student_outputs) if return_outputs else loss

    def _offline_kwargs(self, inputs) -> dict:
        topk = "teacher_topk_ids" in inputs and "teacher_topk_logprobs" in inputs
        return dict(
            teacher_logprobs=inputs["teacher_logprobs"][:, 1:] if "teacher_logprobs" in inputs else None,
            teacher_topk_ids=inputs["teacher_topk_ids"][:, 1:] if topk else None,
            teacher_topk_logprobs=inputs["teacher_topk_logprobs"][:, 1:] if topk else None,
        )

    @staticmethod
    def _normalise(total: torch.Tensor, mask: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        denom = num_items_in_batch if num_items_in_batch is not None else mask.sum().clamp_min(1)
        return total / (denom.to(total.device) if isinstance(denom, torch.Tensor) else denom)

    def _logit_terms(self, model, inputs, labels, mask, num_items_in_batch):
        """Reference path: full logits of both models, chunked losses from :mod:`fastdistill.losses`."""
        student_outputs, student_logits, terms = self._student_and_ce(model, inputs, labels, mask, num_items_in_batch)
        if self.teacher_model is not None:
            self.teacher_model.eval()
            with torch.no_grad():
                teacher_logits = self.teacher_model(
                    input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
                ).logits[:, :-1, :]
            if self.jsd_lambda > 0:
                terms["jsd"] = jsd_loss(student_logits, teacher_logits, beta=self.beta, mask=mask,
                                        num_items_in_batch=num_items_in_batch)
            if self.rkl_lambda > 0:
                terms["rkl"] = reverse_kl_on_logits(student_logits, teacher_logits, mask=mask,
                                                    num_items_in_batch=num_items_in_batch)
        elif self.rkl_lambda > 0:
            terms["rkl"] = reverse_kl_on_chosen(student_logits, labels, mask=mask,
                                                num_items_in_batch=num_items_in_batch,
                                                **self._offline_kwargs(inputs))
        return terms, student_outputs

    def _fused_terms(self, model, inputs, labels, mask, num_items_in_batch):
        """Fused path: hidden states + lm_head weights; no ``[tokens, vocab]`` logits of either model."""
        student_hidden, student_outputs = self._hidden_states(model, inputs)
        student_hidden = student_hidden[:, :-1]
        head = output_head(model)
        teacher_hidden = teacher_head = None
        if self.teacher_model is not None:
            self.teacher_model.eval()
            with torch.no_grad():
                teacher_hidden = self._hidden_states(self.teacher_model, inputs)[0][:, :-1]
            teacher_head = output_head(self.teacher_model)

        def head_terms(student_hidden):
            terms: dict[str, torch.Tensor] = {}
            if self.ce_lambda > 0:
                ce = _chunked_cross_entropy(student_hidden[mask], head.weight, head.bias, labels[mask])
                terms["ce"] = self._normalise(ce, mask, num_items_in_batch)
            if teacher_head is not None:
                fused = dict(mask=mask, student_bias=head.bias, teacher_bias=teacher_head.bias, reduction="batchmean",
                             num_items_in_batch=num_items_in_batch)
                if self.jsd_lambda > 0:
                    terms["jsd"] = fused_jsd_loss(student_hidden, head.weight, teacher_hidden, teacher_head.weight,
                                                  beta=self.beta, **fused)
                if self.rkl_lambda > 0:
                    terms["rkl"] = fused_jsd_loss(student_hidden, head.weight, teacher_hidden, teacher_head.weight,
                                                  beta=1.0, **fused)
            elif self.rkl_lambda > 0:
                terms["rkl"] = fused_reverse_kl_on_chosen(
                    student_hidden, head.weight, labels, mask=mask, student_bias=head.bias, reduction="batchmean",
                    num_items_in_batch=num_items_in_batch, **self._offline_kwargs(inputs)
                )
            return terms

        if self._zero3:  # partitioned heads: run the losses as the student head's forward (gathered once)
            teacher_params = list(teacher_head.parameters()) if teacher_head is not None else []
            return call_as_forward_of(head, head_terms, student_hidden, gathered=teacher_params), student_outputs
        return head_terms(student_hidden), student_outputs


def _chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           labels: torch.Tensor) -> torch.Tensor:
    """Summed token cross-entropy of ``hidden @ weight.T + bias`` without keeping more than one chunk of logits.

    Each chunk is recomputed in the backward (activation checkpointing), so memory is ``O(chunk x V)``.
    """
    from torch.utils.checkpoint import checkpoint

    def chunk_ce(h, y):
        return F.cross_entropy(F.linear(h, weight, bias).float(), y, reduction="sum")

    chunk = fused_chunk_size(weight.shape[0])
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        total = total + checkpoint(chunk_ce, hidden[start : start + chunk], labels[start : start + chunk],
                                   use_reentrant=False)
    return total
