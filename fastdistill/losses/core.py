"""Input handling shared by every loss in :mod:`fastdistill.losses`: masks, reductions, chunk sizes.

Internal building blocks (the public losses live in :mod:`~fastdistill.losses.divergences` and
:mod:`~fastdistill.losses.fused`); nothing here knows about a particular divergence.

**Reductions.** Every loss takes the same ``reduction`` names with one meaning each, where
"positions" are the token positions kept by the mask (all positions without a mask):

- ``"mean"``: sum over positions / number of positions (the per-token mean);
- ``"batchmean"``: sum / number of positions with a mask, sum / ``shape[0]`` (the batch size of
  ``(B, T, ...)`` inputs) without one; TRL's ``GKDTrainer.generalized_jsd_loss`` default (the
  chosen-token losses read ``chosen_ids`` as labels, so they always have a mask);
- ``"sum"``: the sum over positions;
- ``"none"``: the per-position values, zero at masked positions (logit losses only).

``num_items_in_batch``, when given, replaces the divisor whatever the reduction (gradient-
accumulation-correct normalisation, as in TRL). Note that TRL's ``generalized_jsd_loss(...,
reduction="mean")`` averages over positions *and* vocabulary entries; ours does not divide by the
vocabulary size (``trl_mean == ours_mean / V``).
"""

from __future__ import annotations

import torch

__all__ = [
    "IGNORE_INDEX",
    "REDUCTIONS",
    "check_reduction",
    "valid_mask",
    "divisor",
    "default_chunk_size",
    "fused_chunk_size",
    "partition_kl",
    "teacher_targets",
    "check_token_ids",
]

IGNORE_INDEX = -100
REDUCTIONS = ("batchmean", "mean", "sum", "none")

# Scratch budget per chunk of the logit losses, in float32 elements (2**22 elements = 16 MiB per temporary).
_CHUNK_ELEMENTS = 1 << 22
_CUDA_CHUNK_ELEMENTS = 1 << 25
# elements of one [chunk, vocab] fp32 buffer of the fused losses (2**25 = 128 MiB)
_FUSED_CHUNK_ELEMENTS = 1 << 25


def check_reduction(reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
    """Raise ``ValueError`` for a reduction name outside ``allowed``."""
    if reduction not in allowed:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {allowed}")


def valid_mask(mask: torch.Tensor | None, leading_shape, device) -> torch.Tensor | None:
    """Turn a mask into a flat bool mask of positions to keep (``None`` stays ``None``: keep all).

    Accepted: a bool tensor, a float/int 0-1 mask, or a label tensor in which ``-100`` marks the
    ignored positions (an integer tensor holding anything besides 0 and 1 is read as labels).
    """
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(leading_shape):
        n_leading = 1
        for d in leading_shape:
            n_leading *= int(d)
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} ({mask.numel()} positions) but the inputs have leading shape "
            f"{tuple(leading_shape)} ({n_leading} positions); pass one mask entry per token position"
        )
    mask = mask.to(device).reshape(-1)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        return mask != 0
    if mask.numel() and bool(((mask == 0) | (mask == 1)).all()):
        return mask == 1
    return mask != IGNORE_INDEX


def divisor(reduction: str, n_valid: int, first_dim: int, has_mask: bool, num_items_in_batch=None):
    """The number the summed loss is divided by (see the module docstring); ``1`` for ``"sum"``/``"none"``.

    A tensor ``num_items_in_batch`` is returned as a float32 tensor (kept on its device), anything
    else as a Python float.
    """
    if num_items_in_batch is not None:
        if isinstance(num_items_in_batch, torch.Tensor):
            return num_items_in_batch.to(torch.float32)
        return float(num_items_in_batch)
    if reduction in ("sum", "none"):
        return 1.0
    if reduction == "mean":
        return float(max(n_valid, 1))
    if reduction == "batchmean":
        return float(max(n_valid, 1) if has_mask else max(first_dim, 1))
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")


def default_chunk_size(vocab_size: int, budget_elements: int | None = None, device=None,
                       n_tokens: int | None = None) -> int:
    """Rows per chunk of the logit losses so that one ``[chunk, vocab]`` float32 temporary stays within the budget.

    The working set of one chunk is at most about 6 such temporaries (two log-softmaxes, their
    exponentials, the mixture and the gradient). The default budget is ``2**22`` elements on CPU
    (16 MiB per temporary, ~96 MiB working set). On CUDA a GPU needs fewer, larger chunks to amortise
    kernel launches: the budget is an eighth of the logits (``n_tokens * vocab / 8``, so the working
    set stays well under the logits' own size) clamped to ``[2**22, 2**25]`` elements. Either way the
    working set does not grow with the number of tokens beyond that cap.
    """
    if budget_elements is None:
        is_cuda = device is not None and torch.device(device).type == "cuda"
        budget_elements = _CHUNK_ELEMENTS
        if is_cuda:
            budget_elements = _CUDA_CHUNK_ELEMENTS
            if n_tokens:
                budget_elements = min(budget_elements, max(_CHUNK_ELEMENTS, int(n_tokens) * int(vocab_size) // 8))
    return max(1, min(4096, budget_elements // max(int(vocab_size), 1)))


def fused_chunk_size(vocab_size: int, budget_elements: int = _FUSED_CHUNK_ELEMENTS) -> int:
    """Token rows per chunk of the fused losses so that one ``[chunk, vocab]`` fp32 buffer holds ~``budget_elements``.

    Rounded down to a multiple of 8 (matmul-friendly) and kept within ``[8, 1024]``.
    """
    rows = budget_elements // max(int(vocab_size), 1)
    return int(max(8, min(1024, rows - rows % 8)))


# ---------------------------------------------------------------------------------------------
# stored-teacher targets (chosen tokens / top-k) and the partition KL shared by both chosen losses
# ---------------------------------------------------------------------------------------------


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable on both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# probabilities are kept inside [EPS, 1 - EPS] so both outcomes of the partition have finite logs
_EPS = 1e-6


def partition_kl(student_lp: torch.Tensor, teacher_lp: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) over the partition {listed tokens individually, everything else}.

    ``student_lp``/``teacher_lp`` are ``(n, K)`` log-probabilities of the listed tokens; the "rest"
    outcome carries ``1 - sum(p)``. Probabilities are clamped to ``[1e-6, 1 - 1e-6]``. Returns ``(n,)``.
    """
    log_hi = torch.log1p(torch.tensor(-_EPS, dtype=torch.float32))
    student_lp = student_lp.clamp(max=float(log_hi))
    teacher_lp = teacher_lp.float().clamp(min=float(torch.log(torch.tensor(_EPS))), max=float(log_hi))
    q = student_lp.exp()
    listed = (q * (student_lp - teacher_lp)).sum(-1)
    s_rest_lp = _log1mexp(torch.logsumexp(student_lp, -1).clamp(max=float(log_hi)))
    t_rest_lp = _log1mexp(torch.logsumexp(teacher_lp, -1).clamp(max=float(log_hi)))
    return listed + s_rest_lp.exp() * (s_rest_lp - t_rest_lp)


def teacher_targets(leading, chosen_ids, teacher_logprobs, teacher_topk_ids, teacher_topk_logprobs, what: str):
    """Validate the stored-teacher inputs of the chosen / top-k losses and flatten them.

    Returns ``(ids, teacher_lp, default_mask)``: ``(N, K)`` token ids and teacher log-probs (``K = 1``
    for chosen tokens) and the mask implied by ``chosen_ids == -100`` (``None`` for top-k).
    """
    if teacher_topk_ids is not None or teacher_topk_logprobs is not None:
        if teacher_topk_ids is None or teacher_topk_logprobs is None:
            raise ValueError("teacher_topk_ids and teacher_topk_logprobs must be given together")
        same = teacher_topk_ids.shape == teacher_topk_logprobs.shape
        if not same or tuple(teacher_topk_ids.shape[:-1]) != tuple(leading):
            raise ValueError(
                f"teacher_topk_ids {tuple(teacher_topk_ids.shape)} and teacher_topk_logprobs "
                f"{tuple(teacher_topk_logprobs.shape)} must both have shape {tuple(leading)} + (k,)"
            )
        k = teacher_topk_ids.shape[-1]
        return teacher_topk_ids.reshape(-1, k), teacher_topk_logprobs.reshape(-1, k), None
    if chosen_ids is None or teacher_logprobs is None:
        raise ValueError("pass chosen_ids and teacher_logprobs, or teacher_topk_ids and teacher_topk_logprobs")
    for name, tensor in (("chosen_ids", chosen_ids), ("teacher_logprobs", teacher_logprobs)):
        if tuple(tensor.shape) != tuple(leading):
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but {what} has leading shape {tuple(leading)}; "
                "teacher_logprobs must hold exactly one log-prob per completion token"
            )
    return chosen_ids.reshape(-1, 1), teacher_logprobs.reshape(-1, 1), chosen_ids != IGNORE_INDEX


def check_token_ids(ids: torch.Tensor, vocab: int) -> None:
    """Raise ``ValueError`` unless every id lies in ``[0, vocab)``."""
    if ids.numel() and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}) at unmasked positions; got range "
                         f"[{int(ids.min())}, {int(ids.max())}]")
