"""Fused ``lm_head`` + divergence: distill from hidden states without materializing ``[N, V]`` logits.

The kernels here take the hidden states and the ``lm_head`` weights of both models instead of their
logits. Tokens are processed in chunks of ``chunk_size`` rows; for each chunk the student and the
teacher are projected **once**, the per-token divergence and its gradient wrt the student logits
are computed (the chunk kernels of :mod:`fastdistill.losses.kernels`), and that gradient is pushed
through the projection right away (Liger-Kernel's fused-linear style)::

    grad_hidden[chunk] = g @ W_s            grad_W_s += g.T @ h_s[chunk]      grad_b_s += g.sum(0)

so the whole forward + backward costs the four projections (student, teacher, grad wrt hidden,
grad wrt weight) plus elementwise work; TRL's ``ChunkedDivergenceFunction`` projects every
vocabulary tile three times. The autograd backward only scales the stored gradients by
``grad_output``. Only unmasked positions are projected. No gradient flows to the teacher.

**Memory.** With ``C = chunk_size``, ``V`` the vocabulary, ``H_s``/``H_t`` the hidden widths and
``N`` the number of tokens, the extra memory is about::

    K * C * V * 4 bytes          chunk working set, reused by every chunk: K = 4 fp32 [C, V] buffers
                                 for the JSD (the two projections, overwritten in place by the
                                 log-softmaxes, plus two for probabilities / mixture / gradient),
                                 K = 1 for fused_reverse_kl_on_chosen
  + V * H_s * 4 bytes            fp32 weight-gradient accumulator (only if the weight requires grad;
                                 it is the returned gradient for an fp32 weight)
  + N * H_s * 4 bytes            fp32 gradient wrt the hidden states (if required)
  + V * (H_s + H_t) * 4 bytes    fp32 copies of bf16/fp16 weights, CPU only (CUDA multiplies
                                 low-precision operands into fp32 outputs)

independent of ``N`` apart from the hidden-state gradient. :func:`fused_chunk_size` picks ``C`` so
that one ``[C, V]`` buffer holds about ``2**25`` elements (128 MiB; 512 MiB of working set for the
JSD), rounded down to a multiple of 8 within ``[8, 1024]``: ``C = 216`` for ``V = 151936``. Larger
chunks stream the ``lm_head`` weights (read three times and, for the weight gradient, read and
written once per chunk) fewer times, which is what bounds the speed on CPU.

Statistics, logits and gradient accumulators are float32 whatever the input dtype.
"""

from __future__ import annotations

import torch

from fastdistill.losses.core import (
    check_reduction,
    check_token_ids,
    divisor,
    fused_chunk_size,
    teacher_targets,
    valid_mask,
)
from fastdistill.losses.kernels import StudentJSDChunks, chosen_chunk_

__all__ = ["fused_jsd_loss", "fused_reverse_kl_on_chosen", "fused_chunk_size"]

_FUSED_REDUCTIONS = ("mean", "sum", "batchmean")
_LOW_PRECISION = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# fp32-output matmuls (CUDA: low-precision inputs with fp32 output; CPU: fp32 operands)
# ---------------------------------------------------------------------------------------------


def _cuda_low(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and t.dtype in _LOW_PRECISION


def _mm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``out = a @ b`` with ``out`` fp32."""
    if _cuda_low(a) and a.dtype == b.dtype:
        torch.mm(a, b, out_dtype=torch.float32, out=out)
    else:
        torch.mm(a.float(), b.float(), out=out)


def _accumulate_weight_grad(acc: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """``acc += grad_logits.T @ hidden`` in place (fp32 accumulator)."""
    if _cuda_low(hidden):
        torch.addmm(acc, grad_logits.t().to(hidden.dtype), hidden, out_dtype=torch.float32, out=acc)
    else:
        acc.addmm_(grad_logits.t(), hidden.float())


def _hidden_grad_into(out: torch.Tensor, grad_logits: torch.Tensor, weight: torch.Tensor) -> None:
    """``out = grad_logits @ weight`` (fp32 ``out``)."""
    if _cuda_low(weight):
        torch.mm(grad_logits.to(weight.dtype), weight, out_dtype=torch.float32, out=out)
    else:
        torch.mm(grad_logits, weight.float(), out=out)


def _mm_weight(weight: torch.Tensor) -> torch.Tensor:
    """The weight as used in the chunk loop: fp32 once on CPU for low-precision weights, else as is."""
    if weight.dtype in _LOW_PRECISION and weight.device.type != "cuda":
        return weight.float()
    return weight


# ---------------------------------------------------------------------------------------------
# the fused projection + divergence loop
# ---------------------------------------------------------------------------------------------


class _FusedLinearDivergence(torch.autograd.Function):
    """Loss and student gradients of ``sum_rows chunk_fn(h_s W_s^T + b_s, h_t W_t^T + b_t, ...)``, in one pass.

    ``chunk_fn(s_logits, t_logits, sl, need_grad)`` gets fp32 ``[n, V]`` logits of one chunk
    (``t_logits`` is ``None`` without a teacher projection; ``sl`` slices the chunk out of the
    compacted rows) and returns the per-row loss ``(n,)``, a ``[n, V]`` buffer ``g`` (or ``None``) and
    a float ``c`` with ``c * g`` the gradient wrt ``s_logits`` (``c=None``: ``g`` already includes the
    loss scale); it may overwrite the logit buffers.
    """

    @staticmethod
    def forward(ctx, s_hidden, s_weight, s_bias, t_hidden, t_weight, t_bias, rows, chunk_fn, chunk_size, scale):
        need_h, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        device = s_hidden.device
        n_total, vocab = s_hidden.shape[0], s_weight.shape[0]
        contiguous = rows is None
        n_rows = n_total if contiguous else int(rows.numel())

        w_s = _mm_weight(s_weight)
        w_t = _mm_weight(t_weight) if t_weight is not None else None
        grad_h = torch.zeros(s_hidden.shape, dtype=torch.float32, device=device) if need_h else None
        grad_w = torch.zeros(s_weight.shape, dtype=torch.float32, device=device) if need_w else None
        grad_b = torch.zeros(s_bias.shape, dtype=torch.float32, device=device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=device)

        rows_per_chunk = max(1, min(chunk_size, n_rows))
        s_buf = torch.empty((rows_per_chunk, vocab), dtype=torch.float32, device=device)
        t_buf = torch.empty((rows_per_chunk, vocab), dtype=torch.float32, device=device) if w_t is not None else None
        hg_buf = torch.empty((rows_per_chunk, s_hidden.shape[1]), dtype=torch.float32, device=device)
        s_bias32 = s_bias.float() if s_bias is not None else None
        t_bias32 = t_bias.float() if t_bias is not None else None

        for start in range(0, n_rows, rows_per_chunk):
            end = min(start + rows_per_chunk, n_rows)
            n = end - start
            if contiguous:
                h_s = s_hidden[start:end]
                h_t = t_hidden[start:end] if w_t is not None else None
            else:
                idx = rows[start:end]
                h_s = s_hidden.index_select(0, idx)
                h_t = t_hidden.index_select(0, idx) if w_t is not None else None
            s_logits = s_buf[:n]
            _mm_into(s_logits, h_s, w_s.t())
            if s_bias32 is not None:
                s_logits.add_(s_bias32)
            t_logits = None
            if w_t is not None:
                t_logits = t_buf[:n]
                _mm_into(t_logits, h_t, w_t.t())
                if t_bias32 is not None:
                    t_logits.add_(t_bias32)

            loss, g, coef = chunk_fn(s_logits, t_logits, slice(start, end), need_h or need_w or need_b)
            total += loss.sum()
            if g is None:
                continue
            if coef is not None and coef * scale != 1.0:  # coef None: the chunk function already scaled g
                g.mul_(coef * scale)
            if need_h:
                if contiguous:
                    _hidden_grad_into(grad_h[start:end], g, w_s)
                else:
                    _hidden_grad_into(hg_buf[:n], g, w_s)
                    grad_h.index_copy_(0, idx, hg_buf[:n])
            if need_w:
                _accumulate_weight_grad(grad_w, g, h_s)
            if need_b:
                grad_b += g.sum(0)

        # Kept as plain attributes, not saved tensors: backward hands them over (and drops its references,
        # so autograd can adopt them as .grad without a copy) after scaling them in place.
        ctx.grads = (
            grad_h.to(s_hidden.dtype) if need_h else None,
            grad_w.to(s_weight.dtype) if need_w else None,
            grad_b.to(s_bias.dtype) if need_b else None,
        )
        return total * scale

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError(
                "the fused loss stores its gradients from the forward pass and hands them over in its backward; "
                "it cannot be backpropagated twice (retain_graph): recompute the loss instead"
            )
        grad_h, grad_w, grad_b = ctx.grads
        ctx.grads = None
        if float(grad_out) != 1.0:  # the buffers hold the gradient for grad_out == 1; scale in place
            grad_h = grad_h.mul_(grad_out.to(grad_h.dtype)) if grad_h is not None else None
            grad_w = grad_w.mul_(grad_out.to(grad_w.dtype)) if grad_w is not None else None
            grad_b = grad_b.mul_(grad_out.to(grad_b.dtype)) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _check_head(name: str, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if hidden.dim() not in (2, 3):
        raise ValueError(f"{name}_hidden must be (N, H) or (B, T, H), got shape {tuple(hidden.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"{name}_weight must be a (V, H) lm_head weight, got shape {tuple(weight.shape)}")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name}_hidden has width {hidden.shape[-1]} but {name}_weight {tuple(weight.shape)} expects "
            f"(V, {hidden.shape[-1]})"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}_bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},)")


def _rows_and_scale(mask, leading, device, reduction, num_items_in_batch, default_mask=None):
    """Compacted row indices (``None`` = all rows) and ``1 / divisor`` of the requested reduction."""
    valid = valid_mask(mask if mask is not None else default_mask, leading, device)
    n_total = 1
    for d in leading:
        n_total *= int(d)
    if valid is None or bool(valid.all()):
        rows, n_valid = None, n_total
    else:
        rows = valid.nonzero().squeeze(-1)
        n_valid = int(rows.numel())
    first_dim = leading[0] if len(leading) > 1 else n_total
    return rows, 1.0 / float(divisor(reduction, n_valid, first_dim, valid is not None, num_items_in_batch))


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------


def fused_jsd_loss(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_hidden: torch.Tensor,
    teacher_weight: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Generalized JSD between student and teacher computed from hidden states and ``lm_head`` weights.

    Equal to ``jsd_loss(student_hidden @ student_weight.T + student_bias, teacher_hidden @
    teacher_weight.T + teacher_bias, beta, temperature, mask)`` without ever building either
    ``[N, V]`` logits (see the module docstring for the memory formula).

    Args:
        student_hidden: ``(N, H_s)`` or ``(B, T, H_s)`` student hidden states (before the ``lm_head``).
        student_weight: ``(V, H_s)`` student ``lm_head`` weight. When it does not require grad (frozen
            head, LoRA) no weight gradient is computed.
        teacher_hidden: ``(N, H_t)`` or ``(B, T, H_t)``: same leading shape, its own width.
        teacher_weight: ``(V, H_t)``; the vocabulary must match the student's. No gradient flows to
            the teacher.
        beta: ``0`` forward KL(teacher || student), ``1`` reverse KL(student || teacher), else the
            generalized JSD (TRL's convention).
        temperature: both logits are divided by it (no ``T**2`` rescaling).
        mask: leading-shape bool/0-1 mask or labels (``-100`` = ignore).
        student_bias / teacher_bias: optional ``(V,)`` ``lm_head`` biases.
        reduction: ``"mean"`` (sum / number of unmasked tokens), ``"sum"``, or ``"batchmean"``
            (GKD's: sum / number of unmasked tokens with a mask, sum / ``B`` (``shape[0]``) without
            one); the same meanings as in ``jsd_loss`` (see :mod:`fastdistill.losses.core`).
        chunk_size: token rows per chunk; default :func:`fused_chunk_size` of ``V``.
        num_items_in_batch: if given, the loss is ``sum / num_items_in_batch`` whatever ``reduction``
            (gradient-accumulation-correct normalisation, as in TRL).

    Returns:
        A float32 scalar.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_reduction(reduction, _FUSED_REDUCTIONS)
    _check_head("student", student_hidden, student_weight, student_bias)
    _check_head("teacher", teacher_hidden, teacher_weight, teacher_bias)
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student vocabulary ({student_weight.shape[0]}) and teacher vocabulary ({teacher_weight.shape[0]}) "
            "differ; logit-level distillation needs a shared vocabulary"
        )
    leading = student_hidden.shape[:-1]
    if tuple(teacher_hidden.shape[:-1]) != tuple(leading):
        raise ValueError(
            f"student_hidden {tuple(student_hidden.shape)} and teacher_hidden {tuple(teacher_hidden.shape)} must have "
            "the same leading (token) shape"
        )
    vocab = student_weight.shape[0]
    rows, scale = _rows_and_scale(mask, leading, student_hidden.device, reduction, num_items_in_batch)
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    h_t = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
    beta, temperature = float(beta), float(temperature)

    chunk = int(chunk_size or fused_chunk_size(vocab))
    # the chunks' logits are fresh fp32 buffers the kernel may overwrite; the compiled kernel (CUDA) writes the scaled
    # gradient in the dtype the matmuls consume
    grad_dtype = student_weight.dtype if _cuda_low(student_weight) else torch.float32
    chunks = StudentJSDChunks(beta, temperature, scale, min(chunk, h_s.shape[0]), vocab, student_hidden.device,
                               grad_dtype)

    def chunk_fn(s_logits, t_logits, _sl, need_grad):
        loss, g = chunks(s_logits, t_logits, need_grad)
        return loss, g, None  # None: g already carries the loss scale

    return _FusedLinearDivergence.apply(
        h_s, student_weight, student_bias, h_t.detach(), teacher_weight.detach(),
        teacher_bias.detach() if teacher_bias is not None else None, rows, chunk_fn, chunk, scale,
    )


def fused_reverse_kl_on_chosen(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    chosen_ids: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    student_bias: torch.Tensor | None = None,
    teacher_topk_ids: torch.Tensor | None = None,
    teacher_topk_logprobs: torch.Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
    chunk_size: int | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`~fastdistill.losses.reverse_kl_on_chosen` from hidden states, without building full logits.

    Same estimator (reverse KL between the partitions {chosen token, rest}, or {each top-k token,
    rest} with ``teacher_topk_*``), the same clamping, mask defaults (``chosen_ids != -100``) and
    temperature (student only). Per chunk the student is projected once, the log-softmax of the
    listed tokens and its gradient ``(onehot - softmax) / T`` are formed, and the gradient is pushed
    through the ``lm_head`` in place. ``reduction``: ``"mean"`` (per unmasked token), ``"sum"`` or
    ``"batchmean"`` (as in ``reverse_kl_on_chosen``); ``num_items_in_batch`` overrides it.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    check_reduction(reduction, _FUSED_REDUCTIONS)
    _check_head("student", student_hidden, student_weight, student_bias)
    leading = student_hidden.shape[:-1]
    vocab = student_weight.shape[0]
    ids, t_lp, default_mask = teacher_targets(leading, chosen_ids, teacher_logprobs, teacher_topk_ids,
                                              teacher_topk_logprobs, "student_hidden")
    device = student_hidden.device
    rows, scale = _rows_and_scale(mask, leading, device, reduction, num_items_in_batch, default_mask)
    sel_ids = (ids if rows is None else ids[rows.to(ids.device)]).to(device).long()
    sel_t_lp = (t_lp if rows is None else t_lp[rows.to(t_lp.device)]).to(device).float()
    check_token_ids(sel_ids, vocab)
    inv_t = 1.0 / float(temperature)

    def chunk_fn(z, _t_logits, sl, need_grad):
        return chosen_chunk_(z, sel_ids[sl], sel_t_lp[sl], inv_t, need_grad)

    chunk = int(chunk_size or fused_chunk_size(vocab))
    h_s = student_hidden.reshape(-1, student_hidden.shape[-1])
    return _FusedLinearDivergence.apply(
        h_s, student_weight, student_bias, None, None, None, rows, chunk_fn, chunk, scale
    )
