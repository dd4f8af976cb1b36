"""Triton kernels for the per-chunk math of :mod:`fastdistill.losses.kernels` (opt-in, see there).

Every kernel runs on a 2-D grid, one program per (row, vocabulary block) of a ``[rows, V]`` chunk,
so a chunk of a few hundred rows still fills a GPU (a one-row-per-program kernel launches only
``rows`` programs, each looping over ``V``). A row's statistics need the whole row, so each quantity
takes one pass over the blocks that writes per-block partials ``[rows, blocks]``, combined in torch
(``blocks = V / BLOCK``: 38 at ``V = 151936``, so the combination is negligible):

1. log-sum-exp: per block ``max`` and ``sum exp(x - max)`` of ``z / T``, for the student and the teacher;
2. divergence: per block ``<p_s, s - log M>`` and ``<p_t, t - log M>`` (or the KL of ``beta`` 0 / 1);
3. gradient: ``d loss / d z_s`` times the loss scale, written in the gradient dtype, **in place** of the
   student logits when the caller hands their buffer (the fused losses' fp32 chunk logits).

Math in fp32 whatever the input dtype; the formulas are :func:`fastdistill.losses.kernels.jsd_rows`'s.
The tests run these kernels on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``, which
must be set before ``triton`` is first imported) against fp64 references; ``tests/losses/test_cuda.py``
and ``benchmarks/gpu_check.sh`` run them on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["DEFAULT_BLOCK", "jsd_rows", "lse_rows", "softmax_grad_rows"]

# vocabulary entries per program (a power of two); smaller vocabularies use the next power of two
DEFAULT_BLOCK = 4096
_TINY = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny, the floor of the mixture M


@triton.jit
def _lse_partials_kernel(x_ptr, stride_x, pmax_ptr, psum_ptr, V, inv_t, NB, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    in_v = offs < V
    x = tl.load(x_ptr + row * stride_x + offs, mask=in_v, other=float("-inf")).to(tl.float32) * inv_t
    m = tl.max(x, axis=0)
    total = tl.sum(tl.exp(x - m), axis=0)
    tl.store(pmax_ptr + row * NB + blk, m)
    tl.store(psum_ptr + row * NB + blk, total)


@triton.jit
def _log_probs(s_ptr, t_ptr, stride_s, stride_t, lse_s_ptr, lse_t_ptr, row, offs, in_v, inv_t):
    s = tl.load(s_ptr + row * stride_s + offs, mask=in_v, other=0.0).to(tl.float32) * inv_t - tl.load(lse_s_ptr + row)
    t = tl.load(t_ptr + row * stride_t + offs, mask=in_v, other=0.0).to(tl.float32) * inv_t - tl.load(lse_t_ptr + row)
    return s, t


@triton.jit
def _jsd_partials_kernel(s_ptr, t_ptr, stride_s, stride_t, lse_s_ptr, lse_t_ptr, pa_ptr, pb_ptr, V, inv_t, beta, NB,
                         MODE: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0: forward KL <p_t, t - s>; 1: reverse KL <p_s, s - t>; 2: <p_s, s - log M> and <p_t, t - log M>
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    in_v = offs < V
    s, t = _log_probs(s_ptr, t_ptr, stride_s, stride_t, lse_s_ptr, lse_t_ptr, row, offs, in_v, inv_t)
    p_s = tl.exp(s)
    p_t = tl.exp(t)
    if MODE == 0:
        a = p_t * (t - s)
    elif MODE == 1:
        a = p_s * (s - t)
    else:
        log_m = tl.log(tl.maximum(p_s + beta * (p_t - p_s), _TINY))
        a = p_s * (s - log_m)
        b = tl.where(in_v, p_t * (t - log_m), 0.0)
        tl.store(pb_ptr + row * NB + blk, tl.sum(b, axis=0))
    a = tl.where(in_v, a, 0.0)
    tl.store(pa_ptr + row * NB + blk, tl.sum(a, axis=0))


@triton.jit
def _jsd_grad_kernel(s_ptr, t_ptr, g_ptr, stride_s, stride_t, stride_g, lse_s_ptr, lse_t_ptr, kl_ptr, V, inv_t, beta,
                     coef, MODE: tl.constexpr, BLOCK: tl.constexpr):
    # coef * d loss / d s: MODE 0: p_s - p_t; 1: p_s (s - t - KL); 2: p_s (s - log M - KL(student || M))
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    in_v = offs < V
    s, t = _log_probs(s_ptr, t_ptr, stride_s, stride_t, lse_s_ptr, lse_t_ptr, row, offs, in_v, inv_t)
    p_s = tl.exp(s)
    if MODE == 0:
        g = p_s - tl.exp(t)
    elif MODE == 1:
        g = p_s * (s - t - tl.load(kl_ptr + row))
    else:
        p_t = tl.exp(t)
        log_m = tl.log(tl.maximum(p_s + beta * (p_t - p_s), _TINY))
        g = p_s * (s - log_m - tl.load(kl_ptr + row))
    tl.store(g_ptr + row * stride_g + offs, (g * coef).to(g_ptr.dtype.element_ty), mask=in_v)


@triton.jit
def _softmax_grad_kernel(z_ptr, g_ptr, stride_z, stride_g, lse_ptr, w_ptr, V, inv_t, BLOCK: tl.constexpr):
    # -softmax(z / T) * w / T: the dense part of d sum_j g_j log p(id_j) / d z (w = sum_j g_j)
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    in_v = offs < V
    z = tl.load(z_ptr + row * stride_z + offs, mask=in_v, other=0.0).to(tl.float32) * inv_t - tl.load(lse_ptr + row)
    g = -tl.exp(z) * (tl.load(w_ptr + row) * inv_t)
    tl.store(g_ptr + row * stride_g + offs, g.to(g_ptr.dtype.element_ty), mask=in_v)


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A ``[n, V]`` view with unit stride along ``V`` (what the kernels index)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _grid(n: int, vocab: int, block: int | None):
    block = int(block or min(DEFAULT_BLOCK, triton.next_power_of_2(max(vocab, 1))))
    nb = triton.cdiv(vocab, block)
    return block, nb, {"num_warps": 8 if block >= 2048 else 4}


def lse_rows(z: torch.Tensor, inv_t: float, block: int | None = None) -> torch.Tensor:
    """``logsumexp(z / T)`` per row, fp32 ``(n,)``."""
    z = _rows(z)
    n, vocab = z.shape
    block, nb, opts = _grid(n, vocab, block)
    pmax = torch.empty((n, nb), dtype=torch.float32, device=z.device)
    psum = torch.empty((n, nb), dtype=torch.float32, device=z.device)
    if n:
        _lse_partials_kernel[(n, nb)](z, z.stride(0), pmax, psum, vocab, float(inv_t), nb, BLOCK=block, **opts)
    m = pmax.amax(1, keepdim=True)
    return m.squeeze(1) + torch.log((psum * torch.exp(pmax - m)).sum(1))


def jsd_rows(zs: torch.Tensor, zt: torch.Tensor, scale: float, beta: float, temperature: float, need_grad: bool,
             grad_dtype: torch.dtype, out: torch.Tensor | None = None, block: int | None = None):
    """Per-row generalized JSD ``(n,)`` and ``scale * d loss / d zs`` (``None`` without ``need_grad``).

    The gradient is written into ``out`` when given (it may be ``zs`` itself, for an in-place
    gradient; it must then have ``grad_dtype``), else into a new ``grad_dtype`` tensor.
    """
    zs, zt = _rows(zs), _rows(zt)
    n, vocab = zs.shape
    inv_t = 1.0 / float(temperature)
    beta = float(beta)
    mode = 0 if beta == 0.0 else 1 if beta == 1.0 else 2
    block, nb, opts = _grid(n, vocab, block)
    lse_s, lse_t = lse_rows(zs, inv_t, block), lse_rows(zt, inv_t, block)
    pa = torch.empty((n, nb), dtype=torch.float32, device=zs.device)
    pb = torch.empty((n, nb), dtype=torch.float32, device=zs.device) if mode == 2 else pa
    if n:
        _jsd_partials_kernel[(n, nb)](zs, zt, zs.stride(0), zt.stride(0), lse_s, lse_t, pa, pb, vocab, inv_t, beta, nb,
                                      MODE=mode, BLOCK=block, **opts)
    kl = pa.sum(1)  # the loss for beta 0 / 1, KL(student || M) otherwise
    loss = kl if mode != 2 else beta * pb.sum(1) + (1.0 - beta) * kl
    if not need_grad:
        return loss, None
    if out is None:
        out = torch.empty((n, vocab), dtype=grad_dtype, device=zs.device)
    elif out.dtype != grad_dtype or tuple(out.shape) != (n, vocab) or out.stride(-1) != 1:
        raise ValueError(f"out must be a ({n}, {vocab}) {grad_dtype} tensor with unit stride along the vocabulary")
    coef = float(scale) * inv_t * ((1.0 - beta) if mode == 2 else 1.0)
    if n:
        _jsd_grad_kernel[(n, nb)](zs, zt, out, zs.stride(0), zt.stride(0), out.stride(0), lse_s, lse_t, kl, vocab,
                                  inv_t, beta, coef, MODE=mode, BLOCK=block, **opts)
    return loss, out


def softmax_grad_rows(z: torch.Tensor, lse: torch.Tensor, ids: torch.Tensor, g: torch.Tensor, inv_t: float,
                      out_dtype: torch.dtype, out: torch.Tensor | None = None,
                      block: int | None = None) -> torch.Tensor:
    """Gradient of ``sum(g * log_softmax(z / T)[ids])`` wrt ``z``: ``(onehot - p) * g / T`` (``out`` may be ``z``)."""
    z = _rows(z)
    n, vocab = z.shape
    block, nb, opts = _grid(n, vocab, block)
    if out is None:
        out = torch.empty((n, vocab), dtype=out_dtype, device=z.device)
    g = g.float()
    w = g.sum(-1).contiguous()
    if n:
        _softmax_grad_kernel[(n, nb)](z, out, z.stride(0), out.stride(0), lse.float().contiguous(), w, vocab,
                                      float(inv_t), BLOCK=block, **opts)
    return out.scatter_add_(1, ids, (g * inv_t).to(out.dtype))
