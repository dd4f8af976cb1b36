"""Divergences over a partition {listed tokens, rest of the vocabulary}.

A served teacher gives, per position, the log-probs of a few tokens (its top-k, plus the token the
student sampled) and nothing about the other ``V - k`` tokens. Both distributions are
coarse-grained onto the same partition: each listed token is an outcome of its own, every other
token falls into one "rest" outcome carrying ``1 - sum(listed p)``. Any f-divergence (KL either way,
the generalized JSD) between the coarse-grained distributions is a lower bound of the full-vocabulary
one (data-processing inequality), it is zero exactly when the two agree on every listed token, and
it *equals* the full-vocabulary divergence when the listed tokens are the whole vocabulary.
"""

from __future__ import annotations

import math

import torch

__all__ = ["partition_jsd", "topk_partition_loss"]

# a listed log-prob of -inf (a masked token) is replaced by this: its probability is exactly 0 in float32
_NEG = -1.0e4
# the rest outcome's probability is kept >= this, so its log stays finite (its contribution is then < 1e-6)
_REST_EPS = 1e-6


def _rest_logprob(listed: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum(exp(listed)))`` over the last dim, with the rest probability kept in ``[1e-6, 1]``."""
    total = torch.logsumexp(listed, -1).clamp(max=math.log1p(-_REST_EPS))
    # log(1 - exp(x)) stably (Maechler 2012)
    return torch.where(total > -math.log(2.0), torch.log(-torch.expm1(total)), torch.log1p(-torch.exp(total)))


def partition_jsd(student_lp: torch.Tensor, teacher_lp: torch.Tensor, beta: float,
                  listed: torch.Tensor | None = None) -> torch.Tensor:
    """Generalized JSD over {listed tokens, rest}, per row.

    Args:
        student_lp: ``(n, K)`` student log-probs of the listed tokens (full-vocabulary log-softmax values).
        teacher_lp: ``(n, K)`` teacher log-probs of the same tokens.
        beta: TRL's interpolation: ``0`` is KL(teacher || student), ``1`` is KL(student || teacher), in between
            ``beta * KL(teacher || m) + (1 - beta) * KL(student || m)`` with
            ``m = beta * teacher + (1 - beta) * student``.
        listed: ``(n, K)`` bool, ``False`` for slots that are not outcomes (a duplicate id, padding).

    Returns:
        ``(n,)`` float32 divergences.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    s = student_lp.float().clamp(min=_NEG)
    t = teacher_lp.float().clamp(min=_NEG)
    if listed is not None:
        s = torch.where(listed, s, torch.full_like(s, _NEG))
        t = torch.where(listed, t, torch.full_like(t, _NEG))
    s = torch.cat([s, _rest_logprob(s).unsqueeze(-1)], -1)
    t = torch.cat([t, _rest_logprob(t).unsqueeze(-1)], -1)
    if beta == 0.0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1.0:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([s + math.log(1.0 - beta), t + math.log(beta)]), 0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1.0 - beta) * (s.exp() * (s - m)).sum(-1)


def topk_partition_loss(
    student_logits: torch.Tensor,
    ids: torch.Tensor,
    teacher_lp: torch.Tensor,
    beta: float,
    mask: torch.Tensor,
    listed: torch.Tensor | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Generalized JSD between the student's logits and a teacher known on listed tokens only, summed over
    the positions in ``mask`` and divided by ``num_items_in_batch`` (default: the number of those positions).

    Args:
        student_logits: ``(..., V)``.
        ids: ``(..., K)`` listed token ids per position (the teacher's top-k, and the sampled token).
        teacher_lp: ``(..., K)`` teacher log-probs of ``ids``.
        beta: as in :func:`partition_jsd` (``1.0``: reverse KL).
        mask: ``(...)`` bool, positions that count.
        listed: ``(..., K)`` bool, slots that are outcomes (see :func:`partition_jsd`).
        temperature: divides the student logits.
    """
    vocab = student_logits.shape[-1]
    rows = mask.reshape(-1).nonzero().squeeze(-1)
    k = ids.shape[-1]
    sel_ids = ids.reshape(-1, k)[rows].to(student_logits.device).long()
    if sel_ids.numel() and (sel_ids.min() < 0 or sel_ids.max() >= vocab):
        raise ValueError(f"listed token ids must lie in [0, {vocab})")
    logits = student_logits.reshape(-1, vocab)[rows].float()
    if temperature != 1.0:
        logits = logits / temperature
    student_lp = torch.log_softmax(logits, -1).gather(-1, sel_ids)
    sel_listed = None if listed is None else listed.reshape(-1, k)[rows].to(student_logits.device)
    per_row = partition_jsd(student_lp, teacher_lp.reshape(-1, k)[rows].to(student_logits.device), beta, sel_listed)
    denom = num_items_in_batch if num_items_in_batch is not None else max(int(rows.numel()), 1)
    if isinstance(denom, torch.Tensor):
        denom = denom.to(per_row.device)
    return per_row.sum() / denom
