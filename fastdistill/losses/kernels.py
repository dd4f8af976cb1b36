"""Per-chunk math of the losses, written once, and the choice of which implementation runs it.

Internal building blocks of :mod:`fastdistill.losses`. Every loss processes tokens in chunks of
``[rows, V]`` logits; for each chunk it needs the per-row divergence and, in the same pass, the
gradient wrt the student logits (Liger-Kernel style: the loss kernel writes ``d loss / d logits``
during the forward, the backward only scales it), so each vocabulary row is read once.

**Math.** Logits are divided by ``temperature`` (no ``T**2`` rescaling), ``s = log p_s``,
``t = log p_t``; ``beta=0`` is the forward KL(teacher || student) ``<p_t, t - s>`` with gradient
``p_s - p_t``; ``beta=1`` the reverse KL(student || teacher) ``<p_s, s - t>`` with gradient
``p_s (s - t - KL)``; otherwise the generalized JSD ``beta KL(teacher || M) + (1 - beta)
KL(student || M)``, ``M = (1 - beta) p_s + beta p_t``, with student gradient ``(1 - beta) p_s
(s - log M - KL(student || M))`` (all gradients wrt the raw logits carry a further ``1 / T``).
``log M`` is ``log(lerp(p_s, p_t, beta))`` floored at the smallest normal float (which only matters
for tokens below 1e-38 under both models). The chosen-token path needs ``lse = logsumexp(z / T)``
per row and the gradient of ``sum_j g_j log p(id_j)``: ``(onehot - p) * g / T``.

**Implementations** (same formulas; the tests check each against fp64 references):

- :func:`jsd_rows` / :func:`lse_rows` / :func:`softmax_grad_rows`: plain tensor expressions. Run
  ``torch.compile``-d on CUDA by default (TorchInductor fuses a chunk into a few kernels reading the
  bf16 logits), eager for the rare trainable-teacher gradient.
- :func:`jsd_rows_` / :func:`chosen_rows_`: the same math in place on fp32 chunk buffers, allocation
  free; the eager (CPU) default.
- :mod:`fastdistill.losses.triton_kernels`: Triton kernels with 2-D grids (rows x vocabulary blocks),
  used only when ``FASTDISTILL_TRITON=1`` on CUDA (opt-in until measured faster on a GPU), or on CPU
  tensors under Triton's interpreter (``TRITON_INTERPRET=1``, how CI tests them).

:data:`BACKEND` picks one per device from the environment (read at every call, so a test or a user
can switch it): ``FASTDISTILL_TRITON=1`` (opt-in), ``FASTDISTILL_COMPILE`` = ``auto`` (compile on
CUDA), ``1`` (every device) or ``0`` (never). A backend that fails (no Triton, a compiler error)
logs one warning and the next one is used from then on.
"""

from __future__ import annotations

import logging
import os

import torch

from fastdistill.losses.core import partition_kl

logger = logging.getLogger(__name__)

__all__ = [
    "BACKEND",
    "KernelBackend",
    "StudentJSDChunks",
    "jsd_rows",
    "jsd_rows_",
    "lse_rows",
    "softmax_grad_rows",
    "chosen_rows_",
    "chosen_grad_",
    "chosen_chunk_",
    "chosen_kernels",
]

TINY = torch.finfo(torch.float32).tiny
_TRUE = ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------------------------
# out-of-place formulas (torch.compile-friendly)
# ---------------------------------------------------------------------------------------------


def jsd_rows(zs, zt, scale, beta: float, temperature: float, out_dtype: torch.dtype, teacher_grad: bool = False):
    """Per-row divergence and ``scale * d loss / d zs`` of one chunk, out of place.

    ``scale`` is a float or 0-d tensor (the compiled kernel takes a tensor: a Python float would
    recompile for every batch's normaliser). With ``teacher_grad`` a third output is the scaled
    gradient wrt ``zt`` (fp32).
    """
    inv_t = 1.0 / temperature
    s = zs.float() * inv_t
    t = zt.float() * inv_t
    s = s - torch.logsumexp(s, -1, keepdim=True)  # log p_s
    t = t - torch.logsumexp(t, -1, keepdim=True)  # log p_t
    p_s = s.exp()
    coef = scale * inv_t
    coef_t = coef
    if beta == 0.0:
        p_t = t.exp()
        loss = (p_t * (t - s)).sum(-1)
        grad = p_s - p_t
        grad_t = p_t * (t - s - loss.unsqueeze(-1)) if teacher_grad else None
    elif beta == 1.0:
        diff = s - t
        loss = (p_s * diff).sum(-1)
        grad = p_s * (diff - loss.unsqueeze(-1))
        grad_t = t.exp() - p_s if teacher_grad else None
    else:
        p_t = t.exp()
        log_m = torch.log(torch.lerp(p_s, p_t, beta).clamp_min(TINY))
        kl_t = (p_t * (t - log_m)).sum(-1)
        kl_s = (p_s * (s - log_m)).sum(-1)
        loss = beta * kl_t + (1.0 - beta) * kl_s
        grad = p_s * (s - log_m - kl_s.unsqueeze(-1))
        grad_t = p_t * (t - log_m - kl_t.unsqueeze(-1)) if teacher_grad else None
        coef_t = coef * beta
        coef = coef * (1.0 - beta)
    if teacher_grad:
        return loss, (grad * coef).to(out_dtype), grad_t * coef_t
    return loss, (grad * coef).to(out_dtype)


def lse_rows(z, inv_t: float):
    """``logsumexp(z / T)`` per row in fp32 (one chunk)."""
    return torch.logsumexp(z.float() * inv_t, -1)


def softmax_grad_rows(z, lse, ids, g, inv_t: float, out_dtype: torch.dtype):
    """Gradient of ``sum(g * log_softmax(z / T)[ids])`` wrt ``z`` for one chunk: ``(onehot - p) * g / T``."""
    probs = torch.exp(z.float() * inv_t - lse.unsqueeze(-1))
    grad = (-probs * g.sum(-1, keepdim=True)).scatter_add(1, ids, g)
    return (grad * inv_t).to(out_dtype)


# ---------------------------------------------------------------------------------------------
# in-place formulas on fp32 chunk buffers (the eager default)
# ---------------------------------------------------------------------------------------------


class Workspace:
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


def jsd_rows_(zs, zt, beta: float, temperature: float, need_grad: bool, ws: Workspace):
    """:func:`jsd_rows` (student gradient only) in place on the chunk's fp32 buffers ``zs``/``zt``.

    ``zs``, ``zt`` and the two workspace buffers are overwritten. Returns the per-row loss, a buffer
    ``g`` (or ``None``) and a float ``c`` such that ``c * g`` is the gradient wrt the raw student
    logits (the caller folds ``c`` into its own scaling).
    """
    a, b = ws.take(zs.shape[0])
    if temperature != 1.0:
        zs.mul_(1.0 / temperature)
        zt.mul_(1.0 / temperature)
    _log_softmax_(zs, a)  # zs = log p_s, a = p_s
    _log_softmax_(zt, b)  # zt = log p_t, b = p_t
    coef = 1.0 / temperature
    grad = None
    if beta == 0.0:  # <p_t, t - s>; grad p_s - p_t
        loss = _rowdot(b, zt.sub_(zs))
        if need_grad:
            grad = a.sub_(b)
    elif beta == 1.0:  # <p_s, s - t>; grad p_s (s - t - KL)
        diff = zs.sub_(zt)
        loss = _rowdot(a, diff)
        if need_grad:
            grad = diff.sub_(loss.unsqueeze(-1)).mul_(a)
    else:
        log_m = a.lerp_(b, beta).clamp_min_(TINY).log_()  # a = log M
        kl_t = _rowdot(b, zt.sub_(log_m))  # KL(teacher || M)
        p_s = torch.exp(zs, out=b)  # p_s again (a now holds log M)
        ds = zs.sub_(log_m)
        kl_s = _rowdot(p_s, ds)  # KL(student || M)
        loss = beta * kl_t + (1.0 - beta) * kl_s
        if need_grad:  # (1 - beta) p_s (s - m - KL(student || M))
            grad = ds.sub_(kl_s.unsqueeze(-1)).mul_(p_s)
            coef *= 1.0 - beta
    return loss, grad, coef


def chosen_rows_(z, ids, inv_t: float):
    """In place on the chunk's fp32 buffer: returns ``log_softmax(z / T)[ids]`` and ``total``; ``z`` becomes
    ``exp(z / T - max)`` with row sums ``total`` (the input of :func:`chosen_grad_`)."""
    if inv_t != 1.0:
        z.mul_(inv_t)
    z.sub_(z.amax(-1, keepdim=True))
    picked = z.gather(1, ids)
    total = z.exp_().sum(-1, keepdim=True)
    return picked - total.log(), total


def chosen_grad_(z, total, ids, g):
    """In place: turns :func:`chosen_rows_`'s buffer into ``(onehot - p) * g``.

    The gradient wrt the raw logits is that times ``1 / T``, which the caller applies."""
    grad = z.mul_(-g.sum(-1, keepdim=True) / total)
    return grad.scatter_add_(1, ids, g)


# ---------------------------------------------------------------------------------------------
# which implementation runs
# ---------------------------------------------------------------------------------------------


class KernelBackend:
    """Chooses the implementation per device and holds the compiled functions (made once, lazily).

    ``kind(device)`` is ``"triton"``, ``"compile"`` or ``"eager"``; ``run(kind, fn, *args)`` calls a
    non-eager kernel and, if it raises (missing Triton, a compiler error), logs one warning, marks that
    kind failed (later calls skip it) and returns ``None`` so the caller falls back.
    """

    def __init__(self):
        self.failed: set[str] = set()
        self._compiled: dict = {}

    def kind(self, device) -> str:
        dev = torch.device(device).type
        if "triton" not in self.failed and os.environ.get("FASTDISTILL_TRITON", "0").strip().lower() in _TRUE:
            if dev == "cuda" or (dev == "cpu" and os.environ.get("TRITON_INTERPRET", "0") in _TRUE):
                return "triton"
        setting = os.environ.get("FASTDISTILL_COMPILE", "auto").strip().lower()
        wanted = setting in _TRUE or (setting == "auto" and dev == "cuda")
        return "compile" if wanted and "compile" not in self.failed else "eager"

    def compiled(self, fn):
        """``torch.compile(fn, dynamic=True)``, built once per function."""
        if fn not in self._compiled:
            self._compiled[fn] = torch.compile(fn, dynamic=True)
        return self._compiled[fn]

    def triton(self):
        """The Triton kernel module (imported on first use: Triton is optional)."""
        from fastdistill.losses import triton_kernels

        return triton_kernels

    def run(self, kind: str, fn, *args):
        try:
            if kind == "triton":
                return getattr(self.triton(), fn)(*args)
            return self.compiled(fn)(*args)
        except Exception as exc:  # torch._dynamo / inductor / Triton errors have no common public base class
            self.failed.add(kind)
            what = "Triton divergence kernels" if kind == "triton" else "torch.compile of the divergence kernel"
            logger.warning("%s failed (%s: %s); using the fallback kernel", what, type(exc).__name__,
                           str(exc).splitlines()[0] if str(exc) else "")
            return None


BACKEND = KernelBackend()


class StudentJSDChunks:
    """Per-chunk generalized JSD and its gradient wrt the student logits, already multiplied by ``scale``.

    Shared by :func:`~fastdistill.losses.jsd_loss` and :func:`~fastdistill.losses.fused_jsd_loss`:
    :data:`BACKEND`'s choice, with the allocation-free in-place kernel on fp32 buffers reused by every
    chunk as the fallback. ``grad_dtype`` is the dtype the compiled / Triton kernels write the gradient
    in (the in-place one writes fp32).
    """

    def __init__(self, beta: float, temperature: float, scale: float, rows: int, vocab: int, device,
                 grad_dtype: torch.dtype):
        self.beta, self.temperature, self.scale, self.grad_dtype = beta, temperature, scale, grad_dtype
        self.rows, self.vocab, self.device = max(1, rows), vocab, device
        self.scale_t = None
        self.workspace = self.copies = None  # eager buffers, made on first use

    def __call__(self, zs, zt, need_grad: bool, select=None, out=None):
        """``(loss per row, scaled gradient or None)`` for one chunk.

        Without ``select``, ``zs``/``zt`` are the chunk's fp32 logit buffers, which may be overwritten.
        With it, they are the full logits and ``select(t)`` takes the chunk's rows; the eager path
        copies them into reused buffers one at a time (one gathered temporary alive at once). ``out``
        (optional, ``grad_dtype``) is where the Triton kernel writes the gradient.
        """
        kind = BACKEND.kind(self.device)
        if kind != "eager":
            s_rows, t_rows = (zs, zt) if select is None else (select(zs), select(zt))
            if kind == "triton":
                if out is None and select is None and need_grad and zs.dtype == self.grad_dtype:
                    out = zs  # gradient in place of the chunk's own logits
                res = BACKEND.run("triton", "jsd_rows", s_rows, t_rows, self.scale, self.beta, self.temperature,
                                  need_grad, self.grad_dtype, out)
                if res is not None:
                    return res
            else:
                if self.scale_t is None:
                    self.scale_t = torch.tensor(self.scale, dtype=torch.float32, device=self.device)
                res = BACKEND.run("compile", jsd_rows, s_rows, t_rows, self.scale_t, self.beta, self.temperature,
                                  self.grad_dtype)
                if res is not None:
                    return res[0], (res[1] if need_grad else None)
        if self.workspace is None:
            self.workspace = Workspace(2, self.rows, self.vocab, self.device)
        if select is not None:
            if self.copies is None:
                self.copies = Workspace(2, self.rows, self.vocab, self.device)
            first = select(zs)
            s_buf, t_buf = self.copies.take(first.shape[0])
            zs = s_buf.copy_(first)
            del first
            zt = t_buf.copy_(select(zt))
        loss, g, coef = jsd_rows_(zs, zt, self.beta, self.temperature, need_grad, self.workspace)
        if g is not None and coef * self.scale != 1.0:
            g.mul_(coef * self.scale)
        return loss, g


def chosen_kernels(device):
    """``(lse_fn, grad_fn)`` for the chosen-token path of the logit losses on ``device``.

    ``lse_fn(z, inv_t)`` and ``grad_fn(z, lse, ids, g, inv_t, out_dtype)`` with :data:`BACKEND`'s
    choice and the out-of-place eager formulas as fallback.
    """
    kind = BACKEND.kind(device)
    if kind == "eager":
        return lse_rows, softmax_grad_rows

    def lse_fn(*args):
        out = BACKEND.run(kind, "lse_rows" if kind == "triton" else lse_rows, *args)
        return lse_rows(*args) if out is None else out

    def grad_fn(*args):
        out = BACKEND.run(kind, "softmax_grad_rows" if kind == "triton" else softmax_grad_rows, *args)
        return softmax_grad_rows(*args) if out is None else out

    return lse_fn, grad_fn


def chosen_chunk_(z, ids, teacher_lp, inv_t: float, need_grad: bool):
    """Partition reverse KL of one chunk of fp32 student logits ``z`` (overwritten) and its gradient.

    Returns the per-row loss, a ``[n, V]`` buffer ``g`` (``None`` without ``need_grad``) and a float
    ``c`` with ``c * g`` the gradient wrt ``z``: :data:`BACKEND`'s Triton kernels when chosen (the
    gradient written in place of the logits), else the in-place eager formulas.
    """
    lse = BACKEND.run("triton", "lse_rows", z, inv_t) if BACKEND.kind(z.device) == "triton" else None
    if lse is not None:
        s_lp = z.gather(1, ids) * inv_t - lse.unsqueeze(-1)
    else:
        s_lp, total = chosen_rows_(z, ids, inv_t)  # z now holds exp(z / T - max)
    s_lp.requires_grad_(need_grad)
    with torch.enable_grad():
        loss = partition_kl(s_lp, teacher_lp)
        if not need_grad:
            return loss.detach(), None, 1.0
        (g_lp,) = torch.autograd.grad(loss.sum(), s_lp)
    if lse is not None:  # d log p(id_j) / d z = (onehot(id_j) - softmax(z / T)) / T, in place of the logits
        grad = BACKEND.run("triton", "softmax_grad_rows", z, lse, ids, g_lp, inv_t, z.dtype, z)
        if grad is not None:
            return loss.detach(), grad, 1.0
        total = chosen_rows_(z, ids, inv_t)[1]  # the Triton gradient kernel failed; z still holds the logits
    return loss.detach(), chosen_grad_(z, total, ids, g_lp), inv_t
