"""Memory-bounded divergences between student and teacher next-token distributions.

Every function here processes tokens in chunks: the extra memory is ``O(chunk_size x vocab)``
float32 scratch plus, when a gradient is needed, one gradient buffer the size of the logits
(autograd has to hand that back anyway). Statistics are accumulated in float32 whatever the
input dtype, positions whose mask is false (or whose label is ``-100``) are ignored, and the
gradients are computed in the same pass as the loss (Liger-Kernel style: the loss kernel
writes ``d loss / d logits`` during the forward, the backward only scales it), so each
vocabulary row is read once.

Conventions follow TRL's ``GKDTrainer.generalized_jsd_loss``: logits are divided by
``temperature`` (no ``T**2`` rescaling), ``beta=0`` is the forward KL(teacher || student),
``beta=1`` the reverse KL(student || teacher), anything between the generalized JSD
``beta * KL(teacher || M) + (1 - beta) * KL(student || M)`` with ``M = (1 - beta) * student
+ beta * teacher``.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = ["jsd_loss", "reverse_kl_on_logits", "reverse_kl_on_chosen", "default_chunk_size"]

IGNORE_INDEX = -100
_REDUCTIONS = ("batchmean", "sum", "mean", "none")
# Scratch budget per chunk, in float32 elements (2**22 elements = 16 MiB per temporary).
_CHUNK_ELEMENTS = 1 << 22
_CUDA_CHUNK_ELEMENTS = 1 << 25


def default_chunk_size(vocab_size: int, budget_elements: int | None = None, device=None,
                       n_tokens: int | None = None) -> int:
    """Rows per chunk so that one ``[chunk, vocab]`` float32 temporary stays within the budget.

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


# ---------------------------------------------------------------------------------------------
# input handling shared by the three losses
# ---------------------------------------------------------------------------------------------


def _valid_mask(mask: torch.Tensor | None, leading_shape: torch.Size, device) -> torch.Tensor | None:
    """Turn a mask into a flat bool mask of positions to keep.

    Accepted: a bool tensor, a float/int 0-1 mask, or a label tensor in which ``-100`` marks the
    ignored positions (an integer tensor holding anything besides 0 and 1 is read as labels).
    """
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(leading_shape):
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} but the logits have leading shape {tuple(leading_shape)}; "
            "pass one entry per token position"
        )
    mask = mask.to(device).reshape(-1)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        return mask != 0
    if mask.numel() and bool(((mask == 0) | (mask == 1)).all()):
        return mask == 1
    return mask != IGNORE_INDEX


def _reduce(total: torch.Tensor, n_valid: int, first_dim: int, vocab: int, reduction: str, num_items_in_batch,
            has_mask):
    """Return the divisor matching TRL's ``generalized_jsd_loss`` reductions."""
    if num_items_in_batch is not None:
        denom = num_items_in_batch
        if isinstance(denom, torch.Tensor):
            denom = denom.to(total.device, torch.float32)
        return total / denom
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return total / (max(n_valid, 1) if has_mask else max(first_dim, 1))
    if reduction == "mean":  # TRL's jsd.mean() averages over positions *and* vocabulary entries
        return total / max(n_valid * vocab, 1)
    raise AssertionError(reduction)


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {_REDUCTIONS}")


# ---------------------------------------------------------------------------------------------
# generalized JSD on logits
# ---------------------------------------------------------------------------------------------


def _jsd_chunk(s_logits, t_logits, beta: float, temperature: float, need_s: bool, need_t: bool):
    """Per-token divergence of one chunk and, if asked, its gradients wrt the *raw* logits."""
    s = F.log_softmax(s_logits.float() / temperature, dim=-1)
    t = F.log_softmax(t_logits.float() / temperature, dim=-1)
    ps, pt = s.exp(), t.exp()
    grad_s = grad_t = None
    if beta == 0.0:  # forward KL(teacher || student)
        diff = t - s
        loss = (pt * diff).sum(-1)
        if need_s:
            grad_s = (ps - pt) / temperature
        if need_t:
            grad_t = pt * (diff - loss.unsqueeze(-1)) / temperature
    elif beta == 1.0:  # reverse KL(student || teacher)
        diff = s - t
        loss = (ps * diff).sum(-1)
        if need_s:
            grad_s = ps * (diff - loss.unsqueeze(-1)) / temperature
        if need_t:
            grad_t = (pt - ps) / temperature
    else:
        # log M with M = (1 - beta) p_s + beta p_t, computed stably in log space
        m = torch.logaddexp(s + torch.log1p(torch.tensor(-beta)), t + torch.log(torch.tensor(beta)))
        ds, dt = s - m, t - m
        kl_s = (ps * ds).sum(-1)  # KL(student || M)
        kl_t = (pt * dt).sum(-1)  # KL(teacher || M)
        loss = beta * kl_t + (1.0 - beta) * kl_s
        # d loss / d p_s = (1 - beta) (s - m); through the softmax: p_s * (g - <p_s, g>)
        if need_s:
            grad_s = (1.0 - beta) * ps * (ds - kl_s.unsqueeze(-1)) / temperature
        if need_t:
            grad_t = beta * pt * (dt - kl_t.unsqueeze(-1)) / temperature
    return loss, grad_s, grad_t


# ---------------------------------------------------------------------------------------------
# generalized JSD of one chunk, in place in preallocated buffers
# ---------------------------------------------------------------------------------------------

_TINY = torch.finfo(torch.float32).tiny


class _Workspace:
    """Extra ``[rows, V]`` fp32 buffers reused by every chunk (nothing is allocated inside the loop)."""

    def __init__(self, count: int, rows: int, vocab: int, device):
        self.bufs = [torch.empty((rows, vocab), dtype=torch.float32, device=device) for _ in range(count)]

    def take(self, n: int):
        return [b[:n] for b in self.bufs]


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(-1)`` for ``[n, V]`` operands without a ``[n, V]`` temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _log_softmax_(z: torch.Tensor, p: torch.Tensor) -> None:
    """In place: ``z <- log_softmax(z)`` and ``p <- softmax(z)`` (rows of the last dim)."""
    z.sub_(z.amax(-1, keepdim=True))
    total = torch.exp(z, out=p).sum(-1, keepdim=True)
    p.div_(total)
    z.sub_(total.log_())


def _jsd_chunk_inplace(zs, zt, beta: float, temperature: float, need_grad: bool, ws: _Workspace):
    """:func:`~fastdistill.losses.divergences._jsd_chunk` (student gradient only), allocation-free.

    ``zs``/``zt`` are the fp32 logit buffers of the chunk; they and the two workspace buffers are
    overwritten. Returns the per-row loss, a buffer ``g`` and a float ``c`` such that ``c * g`` is the
    gradient wrt the raw student logits (the caller folds ``c`` into its own scaling). Same math as
    ``_jsd_chunk``, except that the mixture is formed as ``log(lerp(p_s, p_t, beta))`` (floored at the
    smallest normal float, which only matters for tokens below 1e-38 under both models) instead of a
    log-sum-exp: one transcendental pass instead of three.
    """
    a, b = ws.take(zs.shape[0])
    if temperature != 1.0:
        zs.mul_(1.0 / temperature)
        zt.mul_(1.0 / temperature)
    _log_softmax_(zs, a)  # zs = log p_s, a = p_s
    _log_softmax_(zt, b)  # zt = log p_t, b = p_t
    coef = 1.0 / temperature
    grad = None
    if beta == 0.0:  # forward KL(teacher || student) = <p_t, t - s>; grad p_s - p_t
        loss = _rowdot(b, zt.sub_(zs))
        if need_grad:
            grad = a.sub_(b)
    elif beta == 1.0:  # reverse KL(student || teacher) = <p_s, s - t>; grad p_s (s - t - KL)
        diff = zs.sub_(zt)
        loss = _rowdot(a, diff)
        if need_grad:
            grad = diff.sub_(loss.unsqueeze(-1)).mul_(a)
    else:
        log_m = a.lerp_(b, beta).clamp_min_(_TINY).log_()  # a = log M, M = (1 - beta) p_s + beta p_t
        kl_t = _rowdot(b, zt.sub_(log_m))  # KL(teacher || M)
        p_s = torch.exp(zs, out=b)  # p_s again (a now holds log M)
        ds = zs.sub_(log_m)
        kl_s = _rowdot(p_s, ds)  # KL(student || M)
        loss = beta * kl_t + (1.0 - beta) * kl_s
        if need_grad:  # (1 - beta) p_s (s - m - KL(student || M))
            grad = ds.sub_(kl_s.unsqueeze(-1)).mul_(p_s)
            coef *= 1.0 - beta
    return loss, grad, coef


def _jsd_rows(zs, zt, scale, beta: float, temperature: float, out_dtype: torch.dtype):
    """Per-row divergence and ``scale * d loss / d zs`` of one chunk, out of place, for ``torch.compile``.

    The same math as :func:`_jsd_chunk_inplace` written as plain tensor expressions, so that
    TorchInductor fuses the chunk into a few kernels that read the (bf16) logits, reduce and write the
    gradient in ``out_dtype`` without ``[rows, V]`` fp32 temporaries in memory. ``scale`` is a 0-d
    tensor (a Python float would recompile for every batch's normaliser).
    """
    s = zs.float() * (1.0 / temperature)
    t = zt.float() * (1.0 / temperature)
    s = s - torch.logsumexp(s, -1, keepdim=True)  # log p_s
    t = t - torch.logsumexp(t, -1, keepdim=True)  # log p_t
    p_s = s.exp()
    coef = scale * (1.0 / temperature)
    if beta == 0.0:
        p_t = t.exp()
        loss = (p_t * (t - s)).sum(-1)
        grad = p_s - p_t
    elif beta == 1.0:
        diff = s - t
        loss = (p_s * diff).sum(-1)
        grad = p_s * (diff - loss.unsqueeze(-1))
    else:
        p_t = t.exp()
        log_m = torch.log(torch.lerp(p_s, p_t, beta).clamp_min(_TINY))
        kl_t = (p_t * (t - log_m)).sum(-1)
        kl_s = (p_s * (s - log_m)).sum(-1)
        loss = beta * kl_t + (1.0 - beta) * kl_s
        grad = p_s * (s - log_m - kl_s.unsqueeze(-1))
        coef = coef * (1.0 - beta)
    return loss, (grad * coef).to(out_dtype)


_COMPILED_ROWS = None
_COMPILE_FAILED = False


def compiled_rows_kernel(device):
    """The ``torch.compile``-d :func:`_jsd_rows` for tensors on ``device``, or ``None`` to stay eager.

    Used on CUDA by default, where the eager chunk loop is bound by memory traffic and kernel launches
    (measured on an H200: 3.5x slower than TRL's materialised bf16 loss without it). Set
    ``FASTDISTILL_COMPILE=0`` to disable, ``=1`` to use it on every device (tests do so on CPU).
    If compilation fails (no Triton, an unsupported platform), one warning is logged and the eager
    kernel is used from then on.
    """
    global _COMPILED_ROWS
    setting = os.environ.get("FASTDISTILL_COMPILE", "auto").strip().lower()
    wanted = setting in ("1", "true", "yes") or (setting == "auto" and torch.device(device).type == "cuda")
    if not wanted or _COMPILE_FAILED:
        return None
    if _COMPILED_ROWS is None:
        _COMPILED_ROWS = torch.compile(_jsd_rows, dynamic=True)
    return _COMPILED_ROWS


def _rows_kernel_failed() -> bool:
    return _COMPILE_FAILED


def _run_rows_kernel(kernel, *args):
    """Call the compiled kernel; on a compilation error, warn once and return ``None`` (use eager)."""
    global _COMPILE_FAILED
    try:
        return kernel(*args)
    except Exception as exc:  # noqa: BLE001 - torch._dynamo / inductor / Triton errors share no public base
        _COMPILE_FAILED = True
        logger.warning("torch.compile of the divergence kernel failed (%s: %s); using the eager kernel",
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None


class _StudentJSDChunks:
    """Per-chunk generalized JSD and its gradient wrt the student logits, already multiplied by ``scale``.

    Shared by :func:`jsd_loss` and :func:`~fastdistill.losses.fused_jsd_loss`: the compiled row kernel
    where it is enabled (CUDA by default, see :func:`compiled_rows_kernel`), else (or once compiling
    has failed) the allocation-free in-place kernel on fp32 buffers reused by every chunk.
    ``grad_dtype`` is the dtype the compiled kernel writes the gradient in (the eager one writes fp32).
    """

    def __init__(self, beta: float, temperature: float, scale: float, rows: int, vocab: int, device,
                 grad_dtype: torch.dtype):
        self.beta, self.temperature, self.scale, self.grad_dtype = beta, temperature, scale, grad_dtype
        self.rows, self.vocab, self.device = max(1, rows), vocab, device
        self.kernel = compiled_rows_kernel(device)
        self.scale_t = torch.tensor(scale, dtype=torch.float32, device=device) if self.kernel is not None else None
        self.workspace = self.copies = None  # eager buffers, made on first use

    def __call__(self, zs, zt, need_grad: bool, select=None):
        """``(loss per row, scaled gradient or None)`` for one chunk.

        Without ``select``, ``zs``/``zt`` are the chunk's fp32 logit buffers, which the eager kernel may
        overwrite. With it, they are the full logits and ``select(t)`` takes the chunk's rows; the eager
        path copies them into reused buffers one at a time (one gathered temporary alive at once).
        """
        if self.kernel is not None and not _COMPILE_FAILED:
            s_rows, t_rows = (zs, zt) if select is None else (select(zs), select(zt))
            out = _run_rows_kernel(self.kernel, s_rows, t_rows, self.scale_t, self.beta, self.temperature,
                                   self.grad_dtype)
            if out is not None:
                return out[0], (out[1] if need_grad else None)
        if self.workspace is None:
            self.workspace = _Workspace(2, self.rows, self.vocab, self.device)
        if select is not None:
            if self.copies is None:
                self.copies = _Workspace(2, self.rows, self.vocab, self.device)
            first = select(zs)
            s_buf, t_buf = self.copies.take(first.shape[0])
            zs = s_buf.copy_(first)
            del first
            zt = t_buf.copy_(select(zt))
        loss, g, coef = _jsd_chunk_inplace(zs, zt, self.beta, self.temperature, need_grad, self.workspace)
        if g is not None and coef * self.scale != 1.0:
            g.mul_(coef * self.scale)
        return loss, g


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
            # rare (a trainable teacher): the allocating kernel, which also returns the teacher gradient
            rows_all = valid_rows if valid_rows is not None else torch.arange(n, device=device)
            for start in range(0, n_rows, chunk_size):
                rows = rows_all[start : start + chunk_size]
                loss, gs, gt = _jsd_chunk(student_logits[rows], teacher_logits[rows], beta, temperature, need_s, True)
                per_token[rows] = loss
                total += loss.sum()
                if need_s:
                    grad_s[rows] = (gs * scale).to(grad_s.dtype)
                grad_t[rows] = (gt * scale).to(grad_t.dtype)
        else:
            # the common case (student gradient only): the shared chunk kernels, compiled or in place
            rows_per_chunk = max(1, min(chunk_size, n_rows))
            chunks = _StudentJSDChunks(beta, temperature, scale, rows_per_chunk, vocab, device,
                                       grad_s.dtype if need_s else student_logits.dtype)
            for start in range(0, n_rows, rows_per_chunk):
                end = min(start + rows_per_chunk, n_rows)
                if valid_rows is None:
                    loss, g = chunks(student_logits, teacher_logits, need_s, select=lambda t: t[start:end])
                else:
                    idx = valid_rows[start:end]
                    loss, g = chunks(student_logits, teacher_logits, need_s, select=lambda t: t.index_select(0, idx))
                total += loss.sum()
                if valid_rows is None:
                    per_token[start:end] = loss
                    if need_s:
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
        reduction: ``"batchmean"`` (TRL's: sum / number of unmasked positions, or / ``shape[0]`` without a
            mask), ``"sum"``, ``"mean"`` (sum / (positions * V), TRL's ``jsd.mean()``) or ``"none"``
            (per-position divergence, ``(...)``, zero at masked positions).
        chunk_size: rows per chunk; default from :func:`default_chunk_size`.
        num_items_in_batch: if given, the loss is ``sum / num_items_in_batch`` (gradient-accumulation-correct
            normalisation, as in TRL).

    Returns:
        A float32 scalar (or per-position tensor for ``reduction="none"``). Values equal TRL's
        ``GKDTrainer.generalized_jsd_loss`` within float32 round-off.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    _check_reduction(reduction)
    leading = student_logits.shape[:-1]
    s2d, t2d = _flatten_pair(student_logits, teacher_logits)
    valid = _valid_mask(mask, leading, s2d.device)
    valid_rows = valid.nonzero().squeeze(-1) if valid is not None else None
    n_valid = int(valid_rows.numel()) if valid is not None else s2d.shape[0]
    first_dim = student_logits.shape[0] if student_logits.dim() > 1 else 1
    if reduction == "none":
        denom = 1.0
    else:
        one = torch.ones((), dtype=torch.float32)
        denom = float(_reduce(one, n_valid, first_dim, s2d.shape[-1], reduction, num_items_in_batch, valid is not None))
    chunk = chunk_size or default_chunk_size(s2d.shape[-1], device=s2d.device, n_tokens=n_valid)
    # denom holds 1 / divisor
    loss, per_token = _ChunkedJSD.apply(s2d, t2d, valid_rows, float(beta), float(temperature), int(chunk), denom)
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


def _lse_rows(z, inv_t: float):
    """``logsumexp(z / T)`` per row in fp32 (one chunk)."""
    return torch.logsumexp(z.float() * inv_t, -1)


def _gather_grad_rows(z, lse, ids, g, inv_t: float, out_dtype: torch.dtype):
    """Gradient of ``sum(g * log_softmax(z / T)[ids])`` wrt ``z`` for one chunk: ``(onehot - p) * g / T``."""
    probs = torch.exp(z.float() * inv_t - lse.unsqueeze(-1))
    grad = (-probs * g.sum(-1, keepdim=True)).scatter_add(1, ids, g)
    return (grad * inv_t).to(out_dtype)


_COMPILED_CHOSEN: dict = {}


def _chosen_kernels(device):
    """Compiled (CUDA by default, see :func:`compiled_rows_kernel`) or eager chunk kernels of the chosen path."""
    if compiled_rows_kernel(device) is None:
        return _lse_rows, _gather_grad_rows
    if not _COMPILED_CHOSEN:
        _COMPILED_CHOSEN["lse"] = torch.compile(_lse_rows, dynamic=True)
        _COMPILED_CHOSEN["grad"] = torch.compile(_gather_grad_rows, dynamic=True)
    return _COMPILED_CHOSEN["lse"], _COMPILED_CHOSEN["grad"]


def _call_kernel(compiled, eager, *args):
    """Run a compiled chunk kernel, or the eager one if compilation fails (warned once)."""
    if compiled is eager:
        return eager(*args)
    out = _run_rows_kernel(compiled, *args)
    return eager(*args) if out is None else out


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
        lse_fn, _ = _chosen_kernels(logits.device)
        lse = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            lse[start:end] = _call_kernel(lse_fn, _lse_rows, _ChunkedGatherLogSoftmax._chunk(logits, rows, start, end),
                                          inv_t)
        picked = logits.gather(1, ids) if rows is None else logits[rows.unsqueeze(-1), ids]
        gathered = picked.float() * inv_t - lse.unsqueeze(-1)
        ctx.save_for_backward(logits, rows, ids, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return gathered

    @staticmethod
    def backward(ctx, grad_out):
        logits, rows, ids, lse = ctx.saved_tensors
        inv_t, chunk_size = 1.0 / ctx.temperature, ctx.chunk_size
        _, grad_fn = _chosen_kernels(logits.device)
        g = grad_out.float()
        n_rows = lse.numel()
        grad = torch.empty_like(logits) if rows is None else torch.zeros_like(logits)
        for start in range(0, n_rows, chunk_size):
            end = min(start + chunk_size, n_rows)
            z = _ChunkedGatherLogSoftmax._chunk(logits, rows, start, end)
            chunk_grad = _call_kernel(grad_fn, _gather_grad_rows, z, lse[start:end], ids[start:end], g[start:end],
                                      inv_t, grad.dtype)
            if rows is None:
                grad[start:end] = chunk_grad
            else:
                grad.index_copy_(0, rows[start:end], chunk_grad)
        return grad, None, None, None, None


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable on both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# probabilities are kept inside [EPS, 1 - EPS] so both outcomes of the partition have finite logs
_EPS = 1e-6


def _partition_kl(student_lp: torch.Tensor, teacher_lp: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher) over the partition {listed tokens individually, everything else}.

    ``student_lp``/``teacher_lp`` are ``(n, K)`` log-probabilities of the listed tokens; the "rest"
    outcome carries ``1 - sum(p)``. Returns ``(n,)``.
    """
    log_hi = torch.log1p(torch.tensor(-_EPS, dtype=torch.float32))
    student_lp = student_lp.clamp(max=float(log_hi))
    teacher_lp = teacher_lp.float().clamp(min=float(torch.log(torch.tensor(_EPS))), max=float(log_hi))
    q = student_lp.exp()
    listed = (q * (student_lp - teacher_lp)).sum(-1)
    s_rest_lp = _log1mexp(torch.logsumexp(student_lp, -1).clamp(max=float(log_hi)))
    t_rest_lp = _log1mexp(torch.logsumexp(teacher_lp, -1).clamp(max=float(log_hi)))
    return listed + s_rest_lp.exp() * (s_rest_lp - t_rest_lp)


def _teacher_targets(leading, chosen_ids, teacher_logprobs, teacher_topk_ids, teacher_topk_logprobs, what: str):
    """Validate the stored-teacher inputs of the chosen / top-k losses and flatten them.

    Returns ``(ids, teacher_lp, default_mask)``: ``(N, K)`` token ids and teacher log-probs (``K = 1``
    for chosen tokens) and the mask implied by ``chosen_ids == -100`` (``None`` for top-k).
    """
    if teacher_topk_ids is not None or teacher_topk_logprobs is not None:
        if teacher_topk_ids is None or teacher_topk_logprobs is None:
            raise ValueError("teacher_topk_ids and teacher_topk_logprobs must be given together")
        if (teacher_topk_ids.shape != teacher_topk_logprobs.shape
                or tuple(teacher_topk_ids.shape[:-1]) != tuple(leading)):
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
        reduction: as in :func:`jsd_loss` (``"mean"`` here is the per-position mean, like ``"batchmean"`` with a mask).

    Returns:
        float32 scalar, or per-position values for ``reduction="none"``.
    """
    _check_reduction(reduction)
    leading = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    ids, t_lp, default_mask = _teacher_targets(leading, chosen_ids, teacher_logprobs, teacher_topk_ids,
                                               teacher_topk_logprobs, "student_logits")
    if mask is None:
        mask = default_mask
    logits2d = student_logits.reshape(-1, vocab)
    valid = _valid_mask(mask, leading, logits2d.device)
    rows = valid.nonzero().squeeze(-1) if valid is not None else torch.arange(logits2d.shape[0], device=logits2d.device)
    all_rows = valid is None  # every row counts: the kernel takes contiguous slices instead of gathers
    sel_ids = ids[rows].to(logits2d.device).long()
    if sel_ids.numel() and (sel_ids.min() < 0 or sel_ids.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}) at unmasked positions; got range "
                         f"[{int(sel_ids.min())}, {int(sel_ids.max())}]")
    chunk = chunk_size or default_chunk_size(vocab, device=student_logits.device, n_tokens=int(rows.numel()))
    student_lp = _ChunkedGatherLogSoftmax.apply(logits2d, None if all_rows else rows, sel_ids, float(temperature),
                                                int(chunk))
    per_row = _partition_kl(student_lp, t_lp[rows].to(logits2d.device))
    if reduction == "none":
        out = torch.zeros(logits2d.shape[0], dtype=torch.float32, device=logits2d.device)
        return out.index_put((rows,), per_row).reshape(leading)
    total = per_row.sum()
    if reduction == "mean":
        reduction = "batchmean"
    first_dim = student_logits.shape[0] if student_logits.dim() > 1 else 1
    return _reduce(total, int(rows.numel()), first_dim, vocab, reduction, num_items_in_batch, valid is not None)
