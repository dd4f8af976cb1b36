"""What the trainers share for a served teacher: config fields, row extraction, answer tensors."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

__all__ = ["ServedTeacherArguments", "batch_rows", "build_served_teacher", "score_tensors", "wants_served_teacher"]


@dataclass
class ServedTeacherArguments:
    """Fields of a teacher served over HTTP (vLLM's OpenAI-compatible server), shared by GKD and GRPO configs.

    A ``teacher_model_name_or_path`` (or ``teacher_model=``) that starts with ``http://`` / ``https://`` is the
    server's base URL (``http://host:8000/v1``); an :class:`~fastdistill.teacher.OpenAIServerTeacher`
    passed as ``teacher_model`` works too. No teacher weights are loaded in the trainer.

    Args:
        teacher_server_model (`str`, *optional*):
            Model name on the server (``vllm serve <name>``). Default: the only model the server lists.
        teacher_top_k (`int`, defaults to `20`):
            Teacher log-probs per completion token (vLLM's ``prompt_logprobs=k``; the server must be started with
            ``--max-logprobs`` >= k; 20 is vLLM's default). The divergences use the partition {these k tokens, the
            sampled token, rest}; with k = vocabulary size they equal the full-vocabulary ones. 0: the sampled
            token's log-prob only.
        teacher_timeout_s (`float`, defaults to `60.0`):
            Seconds before one request attempt times out (then retried with backoff).
        teacher_max_concurrency (`int`, defaults to `16`):
            Requests in flight at once (one request per row).
        teacher_max_retries (`int`, defaults to `4`):
            Retries of a request after a transient HTTP error, a timeout or a bad answer (malformed, truncated).
        teacher_max_failed_fraction (`float`, defaults to `0.25`):
            Rows the server cannot score after retries are left out of the step's distillation term (logged as
            ``teacher/failed_rows``); above this fraction of a step's rows training stops with an error.
    """

    teacher_server_model: str | None = field(
        default=None, metadata={"help": "Model name on the teacher server (default: the only one it serves)."}
    )
    teacher_top_k: int = field(
        default=20, metadata={"help": "Teacher log-probs per token from the server (vLLM prompt_logprobs; needs "
                                      "--max-logprobs >= k). 0: the sampled token's only."}
    )
    teacher_timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one teacher request attempt (s)."})
    teacher_max_concurrency: int = field(default=16, metadata={"help": "Teacher requests in flight at once."})
    teacher_max_retries: int = field(default=4, metadata={"help": "Retries of a failed teacher request."})
    teacher_max_failed_fraction: float = field(
        default=0.25,
        metadata={"help": "Stop training when more of a step's rows than this fail on the teacher server."},
    )


def wants_served_teacher(teacher_model) -> bool:
    """Whether ``teacher_model`` selects a served teacher (URL or OpenAIServerTeacher)."""
    from fastdistill.teacher import OpenAIServerTeacher, is_teacher_url

    return is_teacher_url(teacher_model) or isinstance(teacher_model, OpenAIServerTeacher)


def build_served_teacher(teacher_model, args, tokenizer, probes=()):
    """A connected :class:`~fastdistill.teacher.ServedTeacher` from the trainer's teacher and config."""
    from fastdistill.teacher import ServedTeacher

    served = ServedTeacher(
        teacher_model,
        tokenizer,
        model=args.teacher_server_model,
        top_k=args.teacher_top_k,
        timeout_s=args.teacher_timeout_s,
        max_concurrency=args.teacher_max_concurrency,
        max_retries=args.teacher_max_retries,
        max_failed_fraction=args.teacher_max_failed_fraction,
    )
    return served.connect(probes)


def batch_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
    """Per row: ``(prompt_ids, completion_ids)`` (the exact tokens the student sees) and the positions of the
    completion tokens in the shifted labels (``labels[:, 1:]``), where the loss reads them.

    The completion is the run of labelled (``!= -100``) tokens; the prompt is every attended token before it.
    """
    rows, positions = [], []
    ids_cpu, att_cpu, lab_cpu = input_ids.cpu(), attention_mask.cpu(), labels.cpu()
    for b in range(ids_cpu.size(0)):
        where = (lab_cpu[b] != -100).nonzero().squeeze(-1)
        if where.numel() == 0:
            rows.append(None)
            positions.append(where)
            continue
        first, last = int(where[0]), int(where[-1])
        if where.numel() != last - first + 1:
            raise ValueError(
                f"row {b}: the labelled completion tokens are not contiguous; cannot score them on the server")
        prompt = ids_cpu[b, :first][att_cpu[b, :first].bool()].tolist()
        rows.append((prompt, ids_cpu[b, first : last + 1].tolist()))
        positions.append(where - 1)  # label position j is predicted at logits position j - 1
    return rows, positions


def score_tensors(results: list, positions: list, shifted_labels: torch.Tensor, top_k: int):
    """The answers as tensors over ``shifted_labels``' positions: ``ids``, ``teacher_lp`` and ``listed``
    ``(B, T, k + 1)`` (slot k is the sampled token, listed only when it is not among the top k), and
    ``row_ok`` ``(B,)`` (rows without an answer are False)."""
    batch, length = shifted_labels.shape
    device = shifted_labels.device
    ids = torch.zeros(batch, length, top_k + 1, dtype=torch.long)
    teacher_lp = torch.full((batch, length, top_k + 1), -1.0e4)
    listed = torch.zeros(batch, length, top_k + 1, dtype=torch.bool)
    row_ok = torch.zeros(batch, dtype=torch.bool)
    labels_cpu = shifted_labels.cpu()
    for b, (result, pos) in enumerate(zip(results, positions)):
        if result is None or isinstance(result, BaseException):
            continue
        n = pos.numel()
        chosen = torch.tensor(result["teacher_logprobs"], dtype=torch.float32)
        if chosen.numel() != n:
            continue  # cannot happen with a checked answer; left out rather than misaligned
        sampled = labels_cpu[b, pos]
        if top_k:
            top_ids = torch.tensor(result["teacher_topk_ids"], dtype=torch.long).reshape(n, top_k)
            ids[b, pos, :top_k] = top_ids
            teacher_lp[b, pos, :top_k] = torch.tensor(result["teacher_topk_logprobs"],
                                                      dtype=torch.float32).reshape(n, top_k)
            listed[b, pos, :top_k] = True
            listed[b, pos, top_k] = ~(top_ids == sampled[:, None]).any(-1)
        else:
            listed[b, pos, 0] = True
        ids[b, pos, top_k] = sampled
        teacher_lp[b, pos, top_k] = chosen
        row_ok[b] = True
    return ids.to(device), teacher_lp.to(device), listed.to(device), row_ok.to(device)


def served_grpo_output(trainer, output: dict, pending, mode: str) -> dict:
    """Attach the served teacher's answers to GRPO's generation output (and, with ``teacher_advantage_coef``,
    add the dense per-token advantage ``coef * (log p_teacher(x_t) - log p_policy(x_t))``).

    ``pending`` is ``(PendingScores, completion lengths)`` from the trainer's ``_generate``; the answers arrived
    while the reward functions ran. Adds ``teacher_ids`` / ``teacher_lp`` / ``teacher_listed`` ``(B, C, k + 1)`` and
    ``teacher_row_ok`` ``(B,)``: tensors, so TRL's batch buffering splits them with the rest of the batch.
    """
    served = trainer.served
    completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
    if pending is None:
        raise RuntimeError("the served teacher got no requests for this batch (GRPOTrainer._generate was bypassed)")
    scores, lengths = pending
    results = scores.results()
    if len(results) != completion_ids.size(0):
        raise RuntimeError(f"the served teacher scored {len(results)} rows but the batch has {completion_ids.size(0)}")
    failed = sum(isinstance(r, BaseException) for r in results)
    served.account(results, len(results), failed)
    positions = [torch.arange(min(n, completion_ids.size(1))) for n in lengths]
    ids, teacher_lp, listed, row_ok = score_tensors(results, positions, completion_ids, served.top_k)
    output.update(teacher_ids=ids, teacher_lp=teacher_lp, teacher_listed=listed, teacher_row_ok=row_ok)
    metrics = trainer._metrics[mode]
    failed_rows = trainer.accelerator.gather(torch.tensor(float(failed), device=ids.device)).sum()
    metrics["teacher/failed_rows"].append(float(failed_rows))
    metrics["teacher/wait_s"].append(scores.wait_s)
    metrics["teacher/latency_s"].append(scores.latency_s)
    coef = trainer.teacher_advantage_coef
    if coef > 0:
        policy_lp = output.get("old_per_token_logps")
        if policy_lp is None:
            input_ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], completion_mask], dim=1)
            with torch.no_grad():
                policy_lp = trainer._get_per_token_logps_and_entropies(
                    trainer.model, input_ids, attention_mask, completion_ids.size(1),
                    batch_size=trainer.args.per_device_train_batch_size,
                )[0]
        valid = completion_mask.bool() & row_ok[:, None]
        log_ratio = torch.where(valid, teacher_lp[..., -1] - policy_lp.detach(), torch.zeros_like(policy_lp))
        advantages = output["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        output["advantages"] = advantages + coef * log_ratio
        n = valid.sum().clamp_min(1)
        metrics["teacher/log_ratio"].append(trainer.accelerator.gather((log_ratio.sum() / n).detach()).mean().item())
    return output
