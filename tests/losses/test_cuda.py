"""CUDA paths of the losses and the GKD trainer (skipped without a GPU; run on the lent device).

The CPU suite checks the math in fp64/fp32; these check what differs on a GPU: bf16 operands with
fp32 accumulation (CUDA matmuls write fp32 outputs straight from bf16 inputs in the fused kernel),
tensors and masks living on the device, and the trainer's fused path under bf16 autocast.
"""

import pytest
import torch
import torch.nn.functional as F

from fastdistill.losses import fused_jsd_loss, fused_reverse_kl_on_chosen, jsd_loss, reverse_kl_on_chosen, reverse_kl_on_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

N, H_S, H_T, V = 300, 64, 96, 5003  # a chunk size that does not divide N, an odd vocabulary


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = {
        "hs": torch.randn(N, H_S, generator=g, dtype=torch.float64),
        "ws": torch.randn(V, H_S, generator=g, dtype=torch.float64) * 0.3,
        "ht": torch.randn(N, H_T, generator=g, dtype=torch.float64),
        "wt": torch.randn(V, H_T, generator=g, dtype=torch.float64) * 0.3,
    }
    labels = torch.randint(0, V, (N,), generator=g)
    labels[torch.rand(N, generator=g) < 0.3] = -100
    return d, labels


def _on_cuda(t, dtype=torch.bfloat16, grad=False):
    return t.to("cuda", dtype).requires_grad_(grad)


def _rel_err(a, b):
    return float((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-12))


def _reference_jsd(hs, ws, ht, wt, labels, beta):
    """fp64 CPU reference on materialized logits, from the *bf16-rounded* operands."""
    hs, ws = hs.detach().double().cpu().requires_grad_(True), ws.detach().double().cpu().requires_grad_(True)
    s_logits, t_logits = hs @ ws.t(), ht.detach().double().cpu() @ wt.detach().double().cpu().t()
    loss = jsd_loss(s_logits, t_logits, beta=beta, mask=labels, reduction="batchmean")
    loss.backward()
    return loss.detach(), hs.grad, ws.grad


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_fused_jsd_bf16_on_cuda_matches_fp64_reference(beta):
    d, labels = _inputs()
    hs, ws = _on_cuda(d["hs"], grad=True), _on_cuda(d["ws"], grad=True)
    ht, wt = _on_cuda(d["ht"]), _on_cuda(d["wt"])
    loss = fused_jsd_loss(hs, ws, ht, wt, beta=beta, mask=labels.cuda(), reduction="batchmean", chunk_size=128)
    loss.backward()
    assert loss.dtype == torch.float32 and loss.device.type == "cuda"
    assert hs.grad.dtype == torch.bfloat16 and ws.grad.dtype == torch.bfloat16
    ref_loss, ref_gh, ref_gw = _reference_jsd(hs, ws, ht, wt, labels, beta)
    assert float(loss) == pytest.approx(float(ref_loss), rel=2e-3)  # fp32 accumulation of bf16 products
    assert _rel_err(hs.grad, ref_gh) < 2e-2 and _rel_err(ws.grad, ref_gw) < 2e-2  # bf16 rounding of the result


def test_fused_reverse_kl_on_chosen_bf16_on_cuda_matches_fp64_reference():
    d, labels = _inputs(1)
    teacher_lp = F.log_softmax(d["ht"] @ d["wt"].t(), -1).gather(1, labels.clamp_min(0)[:, None])[:, 0]
    hs, ws = _on_cuda(d["hs"], grad=True), _on_cuda(d["ws"], grad=True)
    loss = fused_reverse_kl_on_chosen(hs, ws, labels.cuda(), teacher_lp.float().cuda(), reduction="batchmean",
                                      chunk_size=128)
    loss.backward()
    hs64, ws64 = hs.detach().double().cpu().requires_grad_(True), ws.detach().double().cpu().requires_grad_(True)
    ref = reverse_kl_on_chosen(hs64 @ ws64.t(), labels, teacher_lp, reduction="batchmean")
    ref.backward()
    assert float(loss) == pytest.approx(float(ref), rel=2e-3)
    assert _rel_err(hs.grad, hs64.grad) < 2e-2 and _rel_err(ws.grad, ws64.grad) < 2e-2


@pytest.mark.parametrize("loss_fn", ["jsd", "rkl", "chosen"])
def test_logit_losses_bf16_on_cuda_accumulate_in_fp32(loss_fn):
    d, labels = _inputs(2)
    s64, t64 = d["hs"] @ d["ws"].t(), d["ht"] @ d["wt"].t()
    s = _on_cuda(s64, grad=True)
    t = _on_cuda(t64)
    s_ref = s.detach().double().cpu().requires_grad_(True)
    t_ref = t.detach().double().cpu()
    if loss_fn == "jsd":
        out, ref = jsd_loss(s, t, mask=labels.cuda()), jsd_loss(s_ref, t_ref, mask=labels)
    elif loss_fn == "rkl":
        out, ref = reverse_kl_on_logits(s, t, mask=labels.cuda()), reverse_kl_on_logits(s_ref, t_ref, mask=labels)
    else:
        t_lp = F.log_softmax(t_ref, -1).gather(1, labels.clamp_min(0)[:, None])[:, 0]
        out = reverse_kl_on_chosen(s, labels.cuda(), t_lp.float().cuda())
        ref = reverse_kl_on_chosen(s_ref, labels, t_lp)
    out.backward()
    ref.backward()
    assert out.dtype == torch.float32 and s.grad.dtype == torch.bfloat16
    assert float(out) == pytest.approx(float(ref), rel=1e-3)
    assert _rel_err(s.grad, s_ref.grad) < 1e-2


def test_gkd_fused_training_on_cuda_in_bf16(tmp_path):
    from fastdistill import GKDConfig, GKDTrainer
    from helpers import dataset, student_and_teacher

    def run(steps, **overrides):
        student, teacher, tok = student_and_teacher()
        args = GKDConfig(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=4, learning_rate=3e-3,
                         lmbda=0.0, logging_steps=1, report_to=[], save_strategy="no", max_length=96, seed=0,
                         ce_lambda=0.5, **overrides)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(),
                             processing_class=tok)
        assert trainer.use_fused_loss
        trainer.train()
        return trainer, [h["loss"] for h in trainer.state.log_history if "loss" in h]

    trainer, gpu = run(30, bf16=True)
    assert next(trainer.model.parameters()).device.type == "cuda"
    _, cpu = run(1, bf16=False, use_cpu=True)
    assert gpu[0] == pytest.approx(cpu[0], rel=2e-2)  # same first-step loss as fp32 on the CPU
    assert len(gpu) == 30 and sum(gpu[-5:]) / 5 < 0.8 * sum(gpu[:5]) / 5


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_compiled_cuda_kernel_equals_eager(monkeypatch, beta):
    d, labels = _inputs(3)
    s, t = _on_cuda(d["hs"] @ d["ws"].t()), _on_cuda(d["ht"] @ d["wt"].t())
    results = {}
    for setting in ("0", "auto"):
        monkeypatch.setenv("FASTDISTILL_COMPILE", setting)
        x = s.clone().requires_grad_(True)
        loss = jsd_loss(x, t, beta=beta, mask=labels.cuda(), chunk_size=64)
        loss.backward()
        results[setting] = (loss.detach(), x.grad.float())
    from fastdistill.losses import kernels

    assert kernels.jsd_rows in kernels.BACKEND._compiled and not kernels.BACKEND.failed
    torch.testing.assert_close(results["auto"][0], results["0"][0], rtol=1e-5, atol=1e-6)
    assert _rel_err(results["auto"][1], results["0"][1]) < 1e-2  # both round the gradient to bf16


def test_compiled_cuda_chosen_kernels_equal_eager(monkeypatch):
    d, labels = _inputs(4)
    s = _on_cuda(d["hs"] @ d["ws"].t())
    teacher_lp = -torch.rand(N, generator=torch.Generator().manual_seed(0)).cuda() * 4
    results = {}
    for setting in ("0", "auto"):
        monkeypatch.setenv("FASTDISTILL_COMPILE", setting)
        x = s.clone().requires_grad_(True)
        loss = reverse_kl_on_chosen(x, labels.cuda(), teacher_lp, chunk_size=64)
        loss.backward()
        results[setting] = (loss.detach(), x.grad.float())
    from fastdistill.losses import kernels

    assert kernels.lse_rows in kernels.BACKEND._compiled and not kernels.BACKEND.failed
    torch.testing.assert_close(results["auto"][0], results["0"][0], rtol=1e-5, atol=1e-6)
    assert _rel_err(results["auto"][1], results["0"][1]) < 1e-2
