"""The torch.compile'd row kernel (the CUDA default) gives the eager kernel's losses and gradients.

Run on CPU with FASTDISTILL_COMPILE=1 (TorchInductor's C++ backend) so CI checks the compiled math
without a GPU; tests/losses/test_cuda.py covers it on a GPU.
"""

import pytest
import torch

from fastdistill.losses import kernels
from fastdistill.losses import fused_jsd_loss, jsd_loss, reverse_kl_on_chosen

pytestmark = pytest.mark.slow  # one Inductor compilation per beta branch (~15 s each on 2 cores)


def _pair(seed, n=37, v=211, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=dtype) * 3, torch.randn(n, v, generator=g, dtype=dtype) * 3


def _loss_and_grad(fn, s, t, **kwargs):
    s = s.clone().requires_grad_(True)
    loss = fn(s, t, **kwargs)
    loss.backward()
    return loss.detach(), s.grad


@pytest.mark.parametrize("beta", [0.0, 0.4, 1.0])
def test_compiled_kernel_equals_eager(monkeypatch, beta):
    s, t = _pair(int(beta * 10))
    labels = torch.randint(0, 211, (37,), generator=torch.Generator().manual_seed(1))
    labels[::3] = -100
    kwargs = dict(beta=beta, temperature=1.5, mask=labels, chunk_size=8)  # 37 rows: a partial last chunk
    monkeypatch.setenv("FASTDISTILL_COMPILE", "0")
    eager = _loss_and_grad(jsd_loss, s, t, **kwargs)
    eager_unmasked = _loss_and_grad(jsd_loss, s, t, beta=beta, chunk_size=8)
    monkeypatch.setenv("FASTDISTILL_COMPILE", "1")
    assert kernels.BACKEND.kind(s.device) == "compile"
    compiled = _loss_and_grad(jsd_loss, s, t, **kwargs)
    compiled_unmasked = _loss_and_grad(jsd_loss, s, t, beta=beta, chunk_size=8)
    assert kernels.jsd_rows in kernels.BACKEND._compiled and not kernels.BACKEND.failed
    for got, want in ((compiled, eager), (compiled_unmasked, eager_unmasked)):
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-7)
    assert bool((compiled[1][labels == -100] == 0).all())  # masked rows get no gradient

    # the fused path uses the same compiled kernel for its chunks
    g = torch.Generator().manual_seed(5)
    hs, ws = torch.randn(37, 16, generator=g), torch.randn(211, 16, generator=g)
    ht, wt = torch.randn(37, 24, generator=g), torch.randn(211, 24, generator=g)
    results = []
    for setting in ("0", "1"):
        monkeypatch.setenv("FASTDISTILL_COMPILE", setting)
        h, w = hs.clone().requires_grad_(True), ws.clone().requires_grad_(True)
        loss = fused_jsd_loss(h, w, ht, wt, beta=beta, temperature=1.5, mask=labels, chunk_size=8)
        loss.backward()
        results.append((loss.detach(), h.grad, w.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_compiled_chosen_kernels_equal_eager(monkeypatch, masked):
    s, _ = _pair(7)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 211, (37,), generator=g)
    teacher_lp = -torch.rand(37, generator=g) * 4
    if masked:
        ids[::4] = -100
    results = []
    for setting in ("0", "1"):
        monkeypatch.setenv("FASTDISTILL_COMPILE", setting)
        results.append(_loss_and_grad(lambda x, _t: reverse_kl_on_chosen(x, ids, teacher_lp, temperature=1.3,
                                                                          chunk_size=8), s, None))
    assert kernels.lse_rows in kernels.BACKEND._compiled and kernels.softmax_grad_rows in kernels.BACKEND._compiled
    assert not kernels.BACKEND.failed
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-7)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    s, t = _pair(3)
    monkeypatch.setenv("FASTDISTILL_COMPILE", "0")
    want = _loss_and_grad(jsd_loss, s, t, beta=0.5, chunk_size=8)

    def broken(*args):
        raise RuntimeError("no working compiler")

    monkeypatch.setenv("FASTDISTILL_COMPILE", "1")
    backend = kernels.KernelBackend()
    backend._compiled[kernels.jsd_rows] = broken
    monkeypatch.setattr(kernels, "BACKEND", backend)
    with caplog.at_level("WARNING", logger="fastdistill.losses.kernels"):
        got = _loss_and_grad(jsd_loss, s, t, beta=0.5, chunk_size=8)
        again = _loss_and_grad(jsd_loss, s, t, beta=0.5, chunk_size=8)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(again[1], want[1])
    assert [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()][0].count("no working compiler") == 1
    assert len([r for r in caplog.records if "torch.compile" in r.getMessage()]) == 1
    assert backend.failed == {"compile"} and backend.kind(s.device) == "eager"
