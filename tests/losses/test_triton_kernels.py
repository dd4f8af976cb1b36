"""The Triton kernels (opt-in with FASTDISTILL_TRITON=1) against fp64 naive references.

Without a GPU they run on CPU tensors under Triton's interpreter: tests/conftest.py sets
TRITON_INTERPRET=1 (it must be set before triton is first imported). The interpreter runs each
program in Python (~0.1 s each on a busy 2-core machine), so the shapes keep the grids to a few dozen
programs. On a GPU the same tests run the compiled kernels on CUDA tensors.
"""

import os

import pytest
import torch
import torch.nn.functional as F

from fastdistill.losses import (
    fused_jsd_loss,
    fused_reverse_kl_on_chosen,
    jsd_loss,
    kernels,
    reverse_kl_on_chosen,
)
from reference import naive_jsd, naive_partition_kl

pytestmark = pytest.mark.slow  # Triton's interpreter: seconds per kernel launch on CPU
pytest.importorskip("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not set (tests/conftest.py sets it before triton is imported)",
                allow_module_level=True)

from fastdistill.losses import triton_kernels as tk  # noqa: E402


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def triton_on(monkeypatch):
    """Select the Triton kernels and count their calls (a silent fallback would fail the test)."""
    monkeypatch.setenv("FASTDISTILL_TRITON", "1")
    backend = kernels.KernelBackend()
    monkeypatch.setattr(kernels, "BACKEND", backend)
    calls = {}
    for name in ("jsd_rows", "lse_rows", "softmax_grad_rows"):
        fn = getattr(tk, name)

        def counted(*args, _fn=fn, _name=name, **kwargs):
            calls[_name] = calls.get(_name, 0) + 1
            if _name == "jsd_rows" and len(args) > 7 and args[7] is args[0]:
                calls["in_place"] = calls.get("in_place", 0) + 1  # gradient written over the student logits
            return _fn(*args, **kwargs)

        monkeypatch.setattr(tk, name, counted)
    assert backend.kind(DEVICE) == "triton"
    yield calls
    assert not backend.failed


def test_triton_is_opt_in_and_cuda_only(monkeypatch):
    backend = kernels.KernelBackend()
    monkeypatch.delenv("FASTDISTILL_TRITON", raising=False)
    monkeypatch.setenv("FASTDISTILL_COMPILE", "auto")
    assert backend.kind("cpu") == "eager" and backend.kind("cuda") == "compile"  # the defaults, unchanged
    monkeypatch.setenv("FASTDISTILL_TRITON", "1")
    assert backend.kind("cuda") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert backend.kind("cpu") == "eager"  # CPU tensors only under the interpreter
    backend.failed.add("triton")
    assert backend.kind("cuda") == "compile"


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_kernel_equals_fp64_reference_across_blocks(beta):
    # 100 columns in blocks of 64: a full and a partial block per row, combined across programs
    g = _gen(int(beta * 10))
    zs, zt = torch.randn(4, 100, generator=g) * 3, torch.randn(4, 100, generator=g) * 3
    z64 = zs.double().requires_grad_()
    ref = naive_jsd(z64, zt.double(), beta, 1.3)
    (ref.sum() * 0.25).backward()
    s_dev, t_dev = zs.to(DEVICE), zt.to(DEVICE)
    loss, grad = tk.jsd_rows(s_dev, t_dev, 0.25, beta, 1.3, True, torch.float32, block=64)
    torch.testing.assert_close(loss.cpu().double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad.cpu().double(), z64.grad, atol=1e-5, rtol=1e-4)


def test_lse_and_softmax_grad_kernels_equal_fp64_reference():
    g = _gen(4)
    z = torch.randn(3, 100, generator=g) * 4
    ids = torch.randint(0, 100, (3, 2), generator=g)
    w = torch.randn(3, 2, generator=g, dtype=torch.float64)
    z64 = z.double().requires_grad_()
    lp = F.log_softmax(z64 / 0.7, -1)
    (lp.gather(1, ids) * w).sum().backward()
    lse = tk.lse_rows(z.to(DEVICE), 1 / 0.7, block=64)
    torch.testing.assert_close(lse.cpu().double(), torch.logsumexp(z.double() / 0.7, -1), atol=1e-5, rtol=1e-6)
    grad = tk.softmax_grad_rows(z.to(DEVICE), lse, ids.to(DEVICE), w.float().to(DEVICE), 1 / 0.7, torch.float32,
                                block=64)
    torch.testing.assert_close(grad.cpu().double(), z64.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_loss_with_triton_equals_fp64_reference(triton_on, beta):
    """Through jsd_loss: labels mask, temperature, chunks."""
    g = _gen(10 + int(beta * 10))
    s, t = torch.randn(2, 3, 41, generator=g, dtype=torch.float64) * 2, torch.randn(2, 3, 41, generator=g,
                                                                                   dtype=torch.float64) * 2
    labels = torch.randint(0, 41, (2, 3), generator=g)
    labels[0, 1] = -100
    keep = labels != -100
    s64 = s.clone().requires_grad_()
    ref = naive_jsd(s64, t, beta, 1.5)[keep].sum() / keep.sum()
    ref.backward()
    s32 = s.float().to(DEVICE).requires_grad_()
    out = jsd_loss(s32, t.float().to(DEVICE), beta=beta, temperature=1.5, mask=labels.to(DEVICE), reduction="mean",
                   chunk_size=4)
    out.backward()
    torch.testing.assert_close(out.cpu().double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s32.grad.cpu().double(), s64.grad, atol=1e-5, rtol=1e-4)
    assert s32.grad[0, 1].abs().sum() == 0  # masked position
    assert triton_on.get("jsd_rows", 0) == 2  # 5 kept rows in chunks of 4


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_fused_jsd_with_triton_equals_fp64_reference(triton_on, beta):
    """Through fused_jsd_loss: biases, H_s != H_t, a bool mask, temperature; gradients wrt hidden, weight, bias
    (the kernel writes the chunk's gradient in place of its fp32 logits)."""
    g = _gen(20 + int(beta * 10))
    n, h_s, h_t, vocab = 6, 8, 12, 41
    d = {"hs": torch.randn(n, h_s, generator=g, dtype=torch.float64),
         "ws": torch.randn(vocab, h_s, generator=g, dtype=torch.float64) * 0.8,
         "bs": torch.randn(vocab, generator=g, dtype=torch.float64),
         "ht": torch.randn(n, h_t, generator=g, dtype=torch.float64),
         "wt": torch.randn(vocab, h_t, generator=g, dtype=torch.float64) * 0.8,
         "bt": torch.randn(vocab, generator=g, dtype=torch.float64)}
    keep = torch.tensor([True, True, False, True, True, True])
    ref_in = {k: v.clone().requires_grad_(k in ("hs", "ws", "bs")) for k, v in d.items()}
    s_logits = ref_in["hs"] @ ref_in["ws"].t() + ref_in["bs"]
    t_logits = ref_in["ht"] @ ref_in["wt"].t() + ref_in["bt"]
    ref = naive_jsd(s_logits, t_logits, beta, 0.8)[keep].sum() / keep.sum()
    ref.backward()
    ours = {k: v.float().to(DEVICE).requires_grad_(k in ("hs", "ws", "bs")) for k, v in d.items()}
    out = fused_jsd_loss(ours["hs"], ours["ws"], ours["ht"], ours["wt"], beta=beta, temperature=0.8,
                         mask=keep.to(DEVICE), student_bias=ours["bs"], teacher_bias=ours["bt"], chunk_size=3)
    out.backward()
    torch.testing.assert_close(out.cpu().double(), ref.detach(), atol=1e-5, rtol=1e-5)
    for k in ("hs", "ws", "bs"):
        torch.testing.assert_close(ours[k].grad.cpu().double(), ref_in[k].grad, atol=1e-4, rtol=1e-4)
    assert triton_on.get("jsd_rows", 0) == 2 and triton_on.get("in_place", 0) == 2  # 5 kept rows in chunks of 3


@pytest.mark.parametrize("topk", [False, True])
def test_chosen_losses_with_triton_equal_fp64_reference(triton_on, topk):
    g = _gen(30)
    n, h, vocab = 5, 8, 41
    hs = torch.randn(n, h, generator=g, dtype=torch.float64)
    ws = torch.randn(vocab, h, generator=g, dtype=torch.float64)
    t_lp_full = F.log_softmax(torch.randn(n, vocab, generator=g, dtype=torch.float64), -1)
    if topk:
        t_lp, ids = t_lp_full.topk(3, -1)
        kwargs = {"teacher_topk_ids": ids, "teacher_topk_logprobs": t_lp}
        keep = torch.ones(n, dtype=torch.bool)
    else:
        ids = torch.randint(0, vocab, (n,), generator=g)
        ids[1] = -100
        keep = ids != -100
        t_lp = t_lp_full.gather(1, ids.clamp_min(0)[:, None])[:, 0]
        kwargs = {"chosen_ids": ids, "teacher_logprobs": t_lp}
    ids2 = kwargs.get("teacher_topk_ids", ids.clamp_min(0)[:, None])
    tlp2 = kwargs.get("teacher_topk_logprobs", t_lp[:, None])
    hs64, ws64 = hs.clone().requires_grad_(), ws.clone().requires_grad_()
    ref = naive_partition_kl(hs64 @ ws64.t(), ids2, tlp2, 1.3)[keep].sum() / keep.sum()
    ref.backward()
    l64 = (hs @ ws.t()).requires_grad_()
    (naive_partition_kl(l64, ids2, tlp2, 1.3)[keep].sum() / keep.sum()).backward()

    dev_kwargs = {k: v.float().to(DEVICE) if v.is_floating_point() else v.to(DEVICE) for k, v in kwargs.items()}
    logits = l64.detach().float().to(DEVICE).requires_grad_()
    out = reverse_kl_on_chosen(logits, temperature=1.3, reduction="mean", chunk_size=2, **dev_kwargs)
    out.backward()
    torch.testing.assert_close(out.cpu().double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.grad.cpu().double(), l64.grad, atol=1e-5, rtol=1e-4)

    h32, w32 = hs.float().to(DEVICE).requires_grad_(), ws.float().to(DEVICE).requires_grad_()
    out = fused_reverse_kl_on_chosen(h32, w32, temperature=1.3, reduction="mean", chunk_size=2, **dev_kwargs)
    out.backward()
    torch.testing.assert_close(out.cpu().double(), ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h32.grad.cpu().double(), hs64.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w32.grad.cpu().double(), ws64.grad, atol=1e-4, rtol=1e-4)
    assert triton_on.get("lse_rows", 0) >= 2 and triton_on.get("softmax_grad_rows", 0) >= 2
