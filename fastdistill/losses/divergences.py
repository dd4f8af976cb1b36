"""Memory-bounded divergences between student and teacher next-token distributions, from logits.

Every function here processes tokens in chunks: the extra memory is ``O(chunk_size x vocab)``
float32 scratch plus, when a gradient is needed, one gradient buffer the size of the logits
(autograd has to hand that back anyway). Statistics are accumulated in float32 whatever the
input dtype, positions whose mask is false (or whose label is ``-100``) are ignored, and the
gradients are computed in the same pass as the loss (see :mod:`fastdistill.losses.kernels` for the
per-chunk math and which implementation runs it), so each vocabulary row is read once.

Conventions follow TRL's ``GKDTrainer.generalized_jsd_loss``: logits are divided by
``temperature`` (no ``T**2`` rescaling), ``beta=0`` is the forward KL(teacher || student),
``beta=1`` the reverse KL(student || teacher), anything between the generalized JSD
``beta * KL(teacher || M) + (1 - beta) * KL(student || M)`` with ``M = (1 - beta) * student
+ beta * teacher``. Reductions are those of :mod:`fastdistill.losses.core` (``"mean"`` is the
per-token mean, as in the fused losses; TRL's ``"mean"`` also divides by the vocabulary size).
"""

from __future__ import annotations

import torch

from fastdistill.losses.core import (
    check_reduction,
    check_token_ids,
    default_chunk_size,
    divisor,
    partition_kl,
    teacher_targets,
    valid_mask,
)
from fastdistill.losses.kernels import StudentJSDChunks, chosen_kernels, jsd_rows

__all__ = ["jsd_loss", "reverse_kl_on_logits", "reverse_kl_on_chosen", "default_chunk_size"]


# ---------------------------------------------------------------------------------------------
# generalized JSD on logits
# ---------------------------------------------------------------------------------------------


class _ChunkedJSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, valid_rows, beta, temperature, chunk_size, scale):
        # scale = 1 / divisor of the reduction; the stored gradients are those of the scaled loss
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, vocab = student_logits.shape
        device = student_logits.device
        grad_s = torch.empty_like(student_logits) if need_s else None
        grad_t = torch.zeros_like(teacher_logits) if need_t else None
        total = torch.zeros((), dtype=torch.float32, device=device)
        per_token = torch.zeros(n, dtype=torch.float32, device=device)
        if valid_rows is None:  # every row counts: contiguous slices, no gathers
            n_rows = n
        else:
            n_rows = int(valid_rows.numel())
            if need_s:
                grad_s.zero_()  # masked rows get no gradient
        if need_t:
            # rare (a trainable teacher): the out-of-place formulas, which also give the teacher gradient
            rows_all = valid_rows if valid_rows is not None else torch.arange(n, device=device)
            for start in range(0, n_rows, chunk_size):
                rows = rows_all[start : start + chunk_size]
                loss, gs, gt = jsd_rows(student_logits[rows], teacher_logits[rows], scale, beta, temperature,
                                        torch.float32, teacher_grad=True)
                per_token[rows] = loss
                total += loss.sum()
                if need_s:
                    grad_s[rows] = gs.to(grad_s.dtype)
                grad_t[rows] = gt.to(grad_t.dtype)
        else:
            # the common case (student gradient only): the shared chunk kernels
            rows_per_chunk = max(1, min(chunk_size, n_rows))
            chunks = StudentJSDChunks(beta, temperature, scale, rows_per_chunk, vocab, device,
                                      grad_s.dtype if need_s else student_logits.dtype)
            for start in range(0, n_rows, rows_per_chunk):
                end = min(start + rows_per_chunk, n_rows)
                if valid_rows is None:
                    out = grad_s[start:end] if need_s else None
                    loss, g = chunks(student_logits, teacher_logits, need_s, select=lambda t, a=start, b=end: t[a:b],
                                     out=out)
                else:
                    idx = valid_rows[start:end]
                    loss, g = chunks(student_logits, teacher_logits, need_s,
                                     select=lambda t, rows=idx: t.index_select(0, rows))
                total += loss.sum()
                if valid_rows is None:
                    per_token[start:end] = loss
                    if need_s and g is not out:
                        grad_s[start:end].copy_(g)
                else:
                    per_token.index_copy_(0, idx, loss)
                    if need_s:
                        grad_s.index_copy_(0, idx, g.to(grad_s.dtype))
        ctx.save_for_backward(grad_s if need_s else None, grad_t if need_t else None)
        ctx.mark_non_differentiable(per_token)
        return total * scale, per_token

    @staticmethod
    def backward(ctx, grad_out, _grad_per_token):
        grad_s, grad_t = ctx.saved_tensors
        # the buffers hold d(loss)/d(logits) for grad_out == 1 (the usual case); otherwise scale in place
        if float(grad_out) != 1.0:
            grad_s = grad_s.mul_(grad_out.to(grad_s.dtype)) if grad_s is not None else None
            grad_t = grad_t.mul_(grad_out.to(grad_t.dtype)) if grad_t is not None else None
        return grad_s, grad_t, None, None, None, None, None


def _flatten_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor):
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student vocabulary ({student_logits.shape[-1]}) and teacher vocabulary ({teacher_logits.shape[-1]}) "
            "differ; logit-level distillation needs a shared vocabulary"
        )
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} must have "
            "the same shape"
        )
    vocab = student_logits.shape[-1]
    return student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)


def jsd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence between student and teacher, chunked over tokens.

    Args:
        student_logits: ``(..., V)`` logits of the student (any float dtype).
        teacher_logits: ``(..., V)`` logits of the teacher, same shape.
        beta: interpolation in ``[0, 1]``; ``0`` is KL(teacher || student), ``1`` is KL(student || teacher).
        temperature: both logits are divided by it before the softmax.
        mask: ``(...)`` bool mask of positions to keep, or labels where ``-100`` marks ignored positions.
        reduction: ``"batchmean"`` (TRL's default: sum / number of unmasked positions, or / ``shape[0]``
            without a mask), ``"mean"`` (sum / number of unmasked positions: the per-token mean; TRL's
            ``"mean"`` is this divided by ``V``), ``"sum"`` or ``"none"`` (per-position divergence,
            ``(...)``, zero at masked positions). See :mod:`fastdistill.losses.core`.
        chunk_size: rows per chunk; default from :func:`default_chunk_size`.
        num_items_in_batch: if given, the loss is ``sum / num_items_in_batch`` (gradient-accumulation-correct
            normalisation, as in TRL).

    Returns:
        A float32 scalar (or per-position tensor for ``reduction="none"``). Values equal TRL's
        ``GKDTrainer.generalized_jsd_loss`` within float32 round-off (for ``"mean"``: ``V`` times TRL's).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_reduction(reduction)
    leading = student_logits.shape[:-1]
    s2d, t2d = _flatten_pair(student_logits, teacher_logits)
    valid = valid_mask(mask, leading, s2d.device)
    valid_rows = valid.nonzero().squeeze(-1) if valid is not None else None
    n_valid = int(valid_rows.numel()) if valid is not None else s2d.shape[0]
    first_dim = student_logits.shape[0] if student_logits.dim() > 1 else 1
    if reduction == "none":
        scale = 1.0
    else:
        scale = 1.0 / float(divisor(reduction, n_valid, first_dim, valid is not None, num_items_in_batch))
    chunk = chunk_size or default_chunk_size(s2d.shape[-1], device=s2d.device, n_tokens=n_valid)
    loss, per_token = _ChunkedJSD.apply(s2d, t2d, valid_rows, float(beta), float(temperature), int(chunk), scale)
    if reduction == "none":
        return per_token.reshape(leading)
    return loss


def reverse_kl_on_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Exact reverse KL(student || teacher) over the whole vocabulary (``jsd_loss`` with ``beta=1``).

    Mode-seeking: the student is penalised for putting mass where the teacher puts little.
    Same arguments, chunking and reductions as :func:`jsd_loss`.
    """
    return jsd_loss(
        student_logits,
        teacher_logits,
        beta=1.0,
        temperature=temperature,
        mask=mask,
        reduction=reduction,
        chunk_size=chunk_size,
        num_items_in_batch=num_items_in_batch,
    )


# ---------------------------------------------------------------------------------------------
# reverse KL from stored teacher log-probs (no live teacher)
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# reverse KL from stored teacher log-probs (no live teacher)
# ---------------------------------------------------------------------------------------------


class _ChunkedGatherLogSoftmax(torch.autograd.Function):
    """``log_softmax(logits[rows] / T)`` gathered at ``ids`` -> ``(len(rows), K)``, chunked.

    Neither the full log-softmax nor a copy of the selected rows is ever materialised: the forward
    keeps only one log-sum-exp per row; the backward recomputes the softmax one chunk at a time,
    using ``d/dz log p(id_j) = (onehot(id_j) - softmax(z)) / T``. ``rows=None`` means every row
    (contiguous slices, no gathers).
    """

    @staticmethod
    def _chunk(logits, rows, start, end):
        return logits[start:end] if rows is None else logits.index_select(0, rows[start:end])

    @staticmethod
    def forward(ctx, logits, rows, ids, temperature, chunk_size):
        n_rows = logits.shape[0] if rows is None else int(rows.numel())
        inv_t = 1.0 / temperature
        lse_fn, _ = chosen_kernels(logits.device)
        lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            lse[start:end] = lse_fn(_ChunkedGatherLogSoftmax._chunk(logits, rows, start, end), inv_t)
        picked = logits.gather(1, ids) if rows is None else logits[rows.unsqueeze(-1), ids]
        gathered = picked.float() * inv_t - lse.unsqueeze(-1)
        ctx.save_for_backward(logits, rows, ids, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return gathered

    @staticmethod
    def backward(ctx, grad_out):
        logits, rows, ids, lse = ctx.saved_tensors
        inv_t, chunk_size = 1.0 / ctx.temperature, ctx.chunk_size
        _, grad_fn = chosen_kernels(logits.device)
        g = grad_out.float()
        n_rows = lse.numel()
        grad = torch.empty_like(logits) if rows is None else torch.zeros_like(logits)
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            z = _ChunkedGatherLogSoftmax._chunk(logits, rows, start, end)
            chunk_grad = grad_fn(z, lse[start:end], ids[start:end], g[start:end], inv_t, grad.dtype)
            if rows is None:
                grad[start:end] = chunk_grad
            else:
                grad.index_copy_(0, rows[start:end], chunk_grad)
        return grad, None, None, None, None


def reverse_kl_on_chosen(
    student_logits: torch.Tensor,
    chosen_ids: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    *,
    teacher_topk_ids: torch.Tensor | None = None,
    teacher_topk_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "batchmean",
    chunk_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reverse KL to a teacher known only through stored log-probs (no live teacher).

    **Estimator.** With only ``log p_teacher(chosen)`` per position, we coarse-grain both
    distributions onto the two outcomes {chosen token, any other token} and take the exact reverse
    KL between those Bernoulli distributions::

        KL_2 = q log(q / p) + (1 - q) log((1 - q) / (1 - p)),  q = p_student(chosen), p = p_teacher(chosen)

    It is never negative, it is zero exactly when ``q == p``, and because coarse-graining can only
    lose information (data-processing inequality) it never exceeds the full-vocabulary
    KL(student || teacher). Its gradient pushes ``q`` towards ``p`` from either side. With top-k
    teacher log-probs the partition becomes {each of the k tokens, everything else}: a finer
    partition, hence a tighter lower bound. Probabilities are clamped to ``[1e-6, 1 - 1e-6]`` so both
    outcomes keep finite logs (a teacher log-prob of exactly 0 would otherwise make KL_2 infinite).

    Args:
        student_logits: ``(..., V)``.
        chosen_ids: ``(...)`` token ids whose teacher log-prob is given (labels; ``-100`` allowed at
            masked positions).
        teacher_logprobs: ``(...)`` teacher log-prob of each chosen token.
        mask: ``(...)`` bool mask or labels (``-100`` = ignore). Defaults to ``chosen_ids != -100``.
        teacher_topk_ids / teacher_topk_logprobs: ``(..., K)``; when given, they replace the chosen-token
            partition by the top-k partition (``chosen_ids``/``teacher_logprobs`` may then be omitted).
        temperature: applied to the student logits only (the teacher's are already probabilities).
        reduction: as in :func:`jsd_loss`.

    Returns:
        float32 scalar, or per-position values for ``reduction="none"``.
    """
    check_reduction(reduction)
    leading = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    ids, t_lp, default_mask = teacher_targets(leading, chosen_ids, teacher_logprobs, teacher_topk_ids,
                                               teacher_topk_logprobs, "student_logits")
    if mask is None:
        mask = default_mask
    logits2d = student_logits.reshape(-1, vocab)
    valid = valid_mask(mask, leading, logits2d.device)
    rows = valid.nonzero().squeeze(-1) if valid is not None else torch.arange(logits2d.shape[0], device=logits2d.device)
    all_rows = valid is None  # every row counts: the kernel takes contiguous slices instead of gathers
    sel_ids = ids[rows].to(logits2d.device).long()
    check_token_ids(sel_ids, vocab)
    chunk = chunk_size or default_chunk_size(vocab, device=student_logits.device, n_tokens=int(rows.numel()))
    student_lp = _ChunkedGatherLogSoftmax.apply(logits2d, None if all_rows else rows, sel_ids, float(temperature),
                                                int(chunk))
    per_row = partition_kl(student_lp, t_lp[rows].to(logits2d.device))
    if reduction == "none":
        out = torch.zeros(logits2d.shape[0], dtype=torch.float32, device=logits2d.device)
        return out.index_put((rows,), per_row).reshape(leading)
    first_dim = student_logits.shape[0] if student_logits.dim() > 1 else 1
    denom = divisor(reduction, int(rows.numel()), first_dim, valid is not None, num_items_in_batch)
    return per_row.sum() / (denom.to(per_row.device) if isinstance(denom, torch.Tensor) else denom)
