"""Fused lm_head + divergence kernels: equal to the logits path, never building full logits."""

import pytest
import torch
import torch.nn.functional as F

import fastdistill.losses.fused as fused_mod
from fastdistill.losses import fused_jsd_loss, fused_reverse_kl_on_chosen, jsd_loss, reverse_kl_on_chosen
from reference import naive_jsd as _naive_jsd_fp64

V = 41


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _setup(seed=0, lead=(13,), h_s=8, h_t=12, vocab=V, bias=False, dtype=torch.float64):
    g = _gen(seed)
    d = {
        "hs": torch.randn(*lead, h_s, generator=g, dtype=dtype),
        "ws": torch.randn(vocab, h_s, generator=g, dtype=dtype) * 0.8,
        "ht": torch.randn(*lead, h_t, generator=g, dtype=dtype),
        "wt": torch.randn(vocab, h_t, generator=g, dtype=dtype) * 0.8,
        "bs": torch.randn(vocab, generator=g, dtype=dtype) if bias else None,
        "bt": torch.randn(vocab, generator=g, dtype=dtype) if bias else None,
    }
    return d


def _logits(h, w, b):
    out = h @ w.t()
    return out + b if b is not None else out


def _mask_for(lead, kind, seed=3):
    if kind is None:
        return None
    keep = torch.rand(lead, generator=_gen(seed)) > 0.35
    keep.view(-1)[0] = True
    if kind == "bool":
        return keep
    labels = torch.randint(0, V, lead, generator=_gen(seed + 1))
    return labels.masked_fill(~keep, -100)


def _keep(mask, lead):
    if mask is None:
        return torch.ones(lead, dtype=torch.bool)
    return mask if mask.dtype == torch.bool else mask != -100


CASES = [
    # (lead, h_s, h_t, bias, temperature, mask kind, chunk)
    ((13,), 8, 12, False, 1.0, None, 4),
    ((13,), 8, 12, True, 1.0, "bool", 4),
    ((13,), 8, 5, True, 2.0, "labels", 5),
    ((3, 5), 8, 16, False, 0.7, "labels", 4),
    ((3, 5), 6, 6, True, 1.0, None, None),
]


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("lead,h_s,h_t,bias,temperature,mask_kind,chunk", CASES)
def test_fused_jsd_equals_logits_path(beta, lead, h_s, h_t, bias, temperature, mask_kind, chunk):
    d = _setup(lead=lead, h_s=h_s, h_t=h_t, bias=bias)
    mask = _mask_for(lead, mask_kind)
    keep = _keep(mask, lead)

    # value: equal to jsd_loss on materialized fp32 logits ("mean" = per unmasked token)
    s32, t32 = _logits(d["hs"], d["ws"], d["bs"]).float(), _logits(d["ht"], d["wt"], d["bt"]).float()
    ref_sum = jsd_loss(s32, t32, beta=beta, temperature=temperature, mask=keep, reduction="sum")
    f32 = {k: (v.float() if v is not None else None) for k, v in d.items()}
    hs = f32["hs"].clone().requires_grad_()
    ws = f32["ws"].clone().requires_grad_()
    bs = f32["bs"].clone().requires_grad_() if bias else None
    out = fused_jsd_loss(hs, ws, f32["ht"], f32["wt"], beta=beta, temperature=temperature, mask=mask,
                         student_bias=bs, teacher_bias=f32["bt"], reduction="mean", chunk_size=chunk)
    assert out.dtype == torch.float32 and out.dim() == 0
    torch.testing.assert_close(out, ref_sum / keep.sum(), atol=1e-5, rtol=1e-5)
    out.backward()

    # gradients: float64 reference through the projection
    hs64, ws64 = d["hs"].clone().requires_grad_(), d["ws"].clone().requires_grad_()
    bs64 = d["bs"].clone().requires_grad_() if bias else None
    per_pos = _naive_jsd_fp64(_logits(hs64, ws64, bs64), _logits(d["ht"], d["wt"], d["bt"]), beta, temperature)
    ref64 = per_pos[keep].sum() / keep.sum()
    ref64.backward()
    torch.testing.assert_close(out.double(), ref64.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs.grad.double(), hs64.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ws.grad.double(), ws64.grad, atol=1e-4, rtol=1e-4)
    if bias:
        torch.testing.assert_close(bs.grad.double(), bs64.grad, atol=1e-4, rtol=1e-4)
    assert torch.count_nonzero(hs.grad[~keep]) == 0  # masked positions get no gradient


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_fused_jsd_reductions(reduction, with_mask):
    lead = (3, 5)
    d = {k: (v.float() if v is not None else None) for k, v in _setup(1, lead=lead).items()}
    mask = _mask_for(lead, "labels") if with_mask else None
    s, t = _logits(d["hs"], d["ws"], None), _logits(d["ht"], d["wt"], None)
    n_valid = int(_keep(mask, lead).sum())
    total = jsd_loss(s, t, beta=0.5, mask=mask, reduction="sum")
    expected = {"sum": total, "mean": total / n_valid,
                "batchmean": jsd_loss(s, t, beta=0.5, mask=mask, reduction="batchmean")}[reduction]
    if reduction == "batchmean" and not with_mask:
        torch.testing.assert_close(expected, total / lead[0])  # GKD's convention: / B
    out = fused_jsd_loss(d["hs"], d["ws"], d["ht"], d["wt"], mask=mask, reduction=reduction, chunk_size=4)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    hs = d["hs"].clone().requires_grad_()
    fused_jsd_loss(hs, d["ws"], d["ht"], d["wt"], mask=mask, num_items_in_batch=torch.tensor(40)).backward()
    hs_ref = d["hs"].clone().requires_grad_()
    ref = jsd_loss(_logits(hs_ref, d["ws"], None), t, mask=mask, num_items_in_batch=torch.tensor(40))
    ref.backward()
    torch.testing.assert_close(hs.grad, hs_ref.grad, atol=1e-6, rtol=1e-4)


def test_grad_output_scales_and_chunking_is_invariant():
    d = {k: (v.float() if v is not None else None) for k, v in _setup(2, lead=(29,)).items()}
    grads = []
    for chunk in (1, 3, 8, 29, 100):
        hs, ws = d["hs"].clone().requires_grad_(), d["ws"].clone().requires_grad_()
        loss = fused_jsd_loss(hs, ws, d["ht"], d["wt"], beta=0.3, chunk_size=chunk)
        (3.0 * loss).backward()
        grads.append((loss.detach(), hs.grad, ws.grad))
    for loss, gh, gw in grads[1:]:
        torch.testing.assert_close(loss, grads[0][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(gh, grads[0][1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(gw, grads[0][2], atol=1e-6, rtol=1e-5)
    hs = d["hs"].clone().requires_grad_()
    fused_jsd_loss(hs, d["ws"], d["ht"], d["wt"], beta=0.3).backward()
    torch.testing.assert_close(grads[0][1], 3.0 * hs.grad, atol=1e-6, rtol=1e-5)


def test_second_backward_fails_loudly_instead_of_rescaling():
    d = {k: (v.float() if v is not None else None) for k, v in _setup(3, lead=(5,)).items()}
    hs = d["hs"].clone().requires_grad_()
    loss = 2.0 * fused_jsd_loss(hs, d["ws"], d["ht"], d["wt"])
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_frozen_head_computes_no_weight_gradient(monkeypatch):
    d = {k: (v.float() if v is not None else None) for k, v in _setup(4, lead=(13,), bias=True).items()}
    calls = []
    real = fused_mod._accumulate_weight_grad
    monkeypatch.setattr(fused_mod, "_accumulate_weight_grad", lambda *a: (calls.append(1), real(*a)))

    hs = d["hs"].clone().requires_grad_()
    ws, bs = d["ws"].clone(), d["bs"].clone()  # frozen head (LoRA / frozen lm_head)
    fused_jsd_loss(hs, ws, d["ht"], d["wt"], student_bias=bs, chunk_size=4).backward()
    assert calls == []  # the weight-gradient matmul was skipped
    assert ws.grad is None and bs.grad is None and hs.grad is not None
    hs2 = d["hs"].clone().requires_grad_()
    fused_reverse_kl_on_chosen(hs2, ws, torch.zeros(13, dtype=torch.long), torch.full((13,), -1.0),
                               chunk_size=4).backward()
    assert calls == [] and hs2.grad is not None

    ws.requires_grad_()
    fused_jsd_loss(d["hs"], ws, d["ht"], d["wt"], chunk_size=4).backward()
    assert len(calls) == 4  # once per chunk: ceil(13 / 4)
    assert ws.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    d = _setup(5, lead=(2, 7), h_s=16, h_t=24, bias=True, dtype=torch.float32)
    low = {k: v.to(dtype) for k, v in d.items()}
    rounded = {k: v.float() for k, v in low.items()}  # the same values, in fp32

    hs, ws = low["hs"].clone().requires_grad_(), low["ws"].clone().requires_grad_()
    out = fused_jsd_loss(hs, ws, low["ht"], low["wt"], student_bias=low["bs"], teacher_bias=low["bt"], chunk_size=4)
    assert out.dtype == torch.float32
    out.backward()
    assert hs.grad.dtype == dtype and ws.grad.dtype == dtype

    hs32, ws32 = rounded["hs"].clone().requires_grad_(), rounded["ws"].clone().requires_grad_()
    ref = fused_jsd_loss(hs32, ws32, rounded["ht"], rounded["wt"], student_bias=rounded["bs"],
                         teacher_bias=rounded["bt"], chunk_size=4)
    ref.backward()
    # fp32 logits and accumulators: the value matches the fp32 computation on the rounded inputs to fp32 round-off,
    # far closer than logits rounded to `dtype` would allow
    torch.testing.assert_close(out, ref.detach(), atol=1e-6, rtol=1e-6)
    low_logits = jsd_loss(_logits(low["hs"], low["ws"], low["bs"]), _logits(low["ht"], low["wt"], low["bt"]),
                          reduction="sum") / 14
    assert abs(low_logits.item() - ref.item()) > 10 * abs(out.item() - ref.item())
    # the gradients are rounded to the parameter dtype once, at the end
    torch.testing.assert_close(hs.grad, hs32.grad.to(dtype))
    torch.testing.assert_close(ws.grad, ws32.grad.to(dtype))


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_inplace_chunk_kernel_matches_reference_kernel(beta, scale):
    """The allocation-free chunk kernel equals the out-of-place one and the fp64 reference, also where
    probabilities underflow."""
    from fastdistill.losses.kernels import Workspace, jsd_rows, jsd_rows_
    from reference import naive_jsd

    g = _gen(13)
    zs, zt = torch.randn(6, 300, generator=g) * scale, torch.randn(6, 300, generator=g) * scale
    z64 = zs.double().requires_grad_()
    ref = naive_jsd(z64, zt.double(), beta, 1.3)
    ref.sum().backward()
    loss, buf, coef = jsd_rows_(zs.clone(), zt.clone(), beta, 1.3, True, Workspace(2, 6, 300, "cpu"))
    assert torch.isfinite(loss).all() and torch.isfinite(buf).all()
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-6 * scale, rtol=1e-5)
    torch.testing.assert_close((coef * buf).double(), z64.grad, atol=1e-6 * scale, rtol=1e-4)
    # the out-of-place formula (compiled on CUDA) shifts by the log-sum-exp in one step: coarser at large logits
    loss, grad = jsd_rows(zs, zt, 1.0, beta, 1.3, torch.float32)
    torch.testing.assert_close(loss.double(), ref.detach(), atol=1e-5 * scale, rtol=1e-5)
    torch.testing.assert_close(grad.double(), z64.grad, atol=1e-5 * scale, rtol=1e-4)


def test_fully_masked_batch_is_zero_without_nan():
    d = {k: (v.float() if v is not None else None) for k, v in _setup(6, lead=(2, 3)).items()}
    hs, ws = d["hs"].clone().requires_grad_(), d["ws"].clone().requires_grad_()
    out = fused_jsd_loss(hs, ws, d["ht"], d["wt"], mask=torch.zeros(2, 3, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0
    assert torch.count_nonzero(hs.grad) == 0 and torch.count_nonzero(ws.grad) == 0


# ---------------------------------------------------------------------------------------------
# fused_reverse_kl_on_chosen
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("topk", [None, 3])
@pytest.mark.parametrize("temperature,bias,lead,chunk", [(1.0, False, (13,), 4), (1.5, True, (3, 5), 4),
                                                         (1.0, True, (3, 5), None)])
def test_fused_chosen_equals_logits_path(topk, temperature, bias, lead, chunk):
    d = _setup(7, lead=lead, bias=bias)
    g = _gen(8)
    t_lp_full = F.log_softmax(torch.randn(*lead, V, generator=g, dtype=torch.float64), -1)
    labels = _mask_for(lead, "labels", seed=9)
    keep = labels != -100
    if topk:
        t_lp, ids = t_lp_full.topk(topk, -1)
        kwargs = {"teacher_topk_ids": ids, "teacher_topk_logprobs": t_lp.float(), "mask": labels}
        args = ()
    else:
        ids = labels.clamp(min=0).unsqueeze(-1)
        t_lp = t_lp_full.gather(-1, ids)
        kwargs = {}
        args = (labels, t_lp.squeeze(-1).float())

    f32 = {k: (v.float() if v is not None else None) for k, v in d.items()}
    hs, ws = f32["hs"].clone().requires_grad_(), f32["ws"].clone().requires_grad_()
    bs = f32["bs"].clone().requires_grad_() if bias else None
    out = fused_reverse_kl_on_chosen(hs, ws, *args, student_bias=bs, temperature=temperature, chunk_size=chunk,
                                     **kwargs)
    ref = reverse_kl_on_chosen(_logits(f32["hs"], f32["ws"], f32["bs"]), *args, temperature=temperature,
                               reduction="sum", **kwargs) / keep.sum()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    out.backward()

    # fp64 reference from a full log-softmax
    hs64, ws64 = d["hs"].clone().requires_grad_(), d["ws"].clone().requires_grad_()
    bs64 = d["bs"].clone().requires_grad_() if bias else None
    s_lp = F.log_softmax(_logits(hs64, ws64, bs64) / temperature, -1).gather(-1, ids)
    q, p = s_lp.exp(), t_lp.exp()
    per_pos = (q * (s_lp - t_lp)).sum(-1) + (1 - q.sum(-1)) * (torch.log1p(-q.sum(-1)) - torch.log1p(-p.sum(-1)))
    ref64 = per_pos[keep].sum() / keep.sum()
    ref64.backward()
    torch.testing.assert_close(out.double(), ref64.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hs.grad.double(), hs64.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ws.grad.double(), ws64.grad, atol=1e-4, rtol=1e-4)
    if bias:
        torch.testing.assert_close(bs.grad.double(), bs64.grad, atol=1e-4, rtol=1e-4)
    assert torch.count_nonzero(hs.grad[~keep]) == 0


def test_fused_chosen_reductions_and_zero_at_match():
    d = {k: (v.float() if v is not None else None) for k, v in _setup(10, lead=(2, 6)).items()}
    labels = _mask_for((2, 6), "labels", seed=11)
    keep = labels != -100
    own = F.log_softmax(_logits(d["hs"], d["ws"], None), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    hs = d["hs"].clone().requires_grad_()
    zero = fused_reverse_kl_on_chosen(hs, d["ws"], labels, own)
    zero.backward()
    assert abs(zero.item()) < 1e-6 and hs.grad.abs().max().item() < 1e-6

    t_lp = own - 0.3
    s = _logits(d["hs"], d["ws"], None)
    total = reverse_kl_on_chosen(s, labels, t_lp, reduction="sum")
    assert total.item() > 1e-4
    for reduction, expected in (("sum", total), ("mean", total / keep.sum()),
                                ("batchmean", reverse_kl_on_chosen(s, labels, t_lp, reduction="batchmean"))):
        out = fused_reverse_kl_on_chosen(d["hs"], d["ws"], labels, t_lp, reduction=reduction, chunk_size=5)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    out = fused_reverse_kl_on_chosen(d["hs"], d["ws"], labels, t_lp, num_items_in_batch=50)
    torch.testing.assert_close(out, total / 50, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors():
    d = {k: (v.float() if v is not None else None) for k, v in _setup(12, lead=(13,)).items()}
    hs, ws, ht, wt = d["hs"], d["ws"], d["ht"], d["wt"]
    with pytest.raises(ValueError, match="vocabulary"):
        fused_jsd_loss(hs, ws, ht, wt[:-1])
    with pytest.raises(ValueError, match=r"mask has shape \(12,\).*13 positions"):
        fused_jsd_loss(hs, ws, ht, wt, mask=torch.ones(12, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask has shape"):
        fused_jsd_loss(hs.view(1, 13, -1), ws, ht.view(1, 13, -1), wt, mask=torch.ones(13, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="leading"):
        fused_jsd_loss(hs, ws, ht[:-1], wt)
    with pytest.raises(ValueError, match="width"):
        fused_jsd_loss(hs, wt, ht, wt)
    with pytest.raises(ValueError, match="bias"):
        fused_jsd_loss(hs, ws, ht, wt, student_bias=torch.zeros(V + 1))
    with pytest.raises(ValueError, match="unknown reduction"):
        fused_jsd_loss(hs, ws, ht, wt, reduction="none")
    with pytest.raises(ValueError, match="unknown reduction"):
        fused_reverse_kl_on_chosen(hs, ws, torch.zeros(13, dtype=torch.long), torch.zeros(13), reduction="avg")
    with pytest.raises(ValueError, match="beta"):
        fused_jsd_loss(hs, ws, ht, wt, beta=-0.1)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        fused_reverse_kl_on_chosen(hs, ws, torch.zeros(13, dtype=torch.long), torch.zeros(12))
    with pytest.raises(ValueError, match="mask"):
        fused_reverse_kl_on_chosen(hs, ws, torch.zeros(13, dtype=torch.long), torch.zeros(13),
                                   mask=torch.ones(14, dtype=torch.bool))
    with pytest.raises(ValueError, match="token ids"):
        fused_reverse_kl_on_chosen(hs, ws, torch.full((13,), V), torch.zeros(13))


# ---------------------------------------------------------------------------------------------
# one meaning of `reduction` across every loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("topk", [False, True])
def test_reductions_mean_the_same_in_every_loss(with_mask, topk):
    """"mean" is sum / kept positions, "batchmean" / kept positions with a mask and / shape[0] without, in all
    six losses (logits and fused); TRL's "mean" (also / V) is not one of them."""
    lead = (3, 5)
    d = {k: (v.float() if v is not None else None) for k, v in _setup(21, lead=lead).items()}
    s, t = _logits(d["hs"], d["ws"], None), _logits(d["ht"], d["wt"], None)
    keep = _keep(_mask_for(lead, "bool", seed=22), lead) if with_mask else torch.ones(lead, dtype=torch.bool)
    mask = keep if with_mask else None
    n_kept = int(keep.sum())
    g = _gen(23)
    ids = torch.randint(0, V, (*lead, 2 if topk else 1), generator=g)
    t_lp = F.log_softmax(t, -1).gather(-1, ids)
    chosen = dict(teacher_topk_ids=ids, teacher_topk_logprobs=t_lp) if topk else dict(chosen_ids=ids[..., 0],
                                                                                        teacher_logprobs=t_lp[..., 0])
    losses = {
        "jsd": lambda r: jsd_loss(s, t, beta=0.4, mask=mask, reduction=r),
        "rkl": lambda r: jsd_loss(s, t, beta=1.0, mask=mask, reduction=r),
        "chosen": lambda r: reverse_kl_on_chosen(s, mask=mask, reduction=r, **chosen),
        "fused_jsd": lambda r: fused_jsd_loss(d["hs"], d["ws"], d["ht"], d["wt"], beta=0.4, mask=mask, reduction=r),
        "fused_chosen": lambda r: fused_reverse_kl_on_chosen(d["hs"], d["ws"], mask=mask, reduction=r, **chosen),
    }
    sums = {name: fn("sum") for name, fn in losses.items()}
    torch.testing.assert_close(sums["fused_jsd"], sums["jsd"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sums["fused_chosen"], sums["chosen"], atol=1e-5, rtol=1e-5)
    for name, fn in losses.items():
        assert sums[name] > 0
        torch.testing.assert_close(fn("mean"), sums[name] / n_kept, atol=1e-6, rtol=1e-5)
        # chosen_ids are labels: the chosen-token losses always have a mask
        masked = with_mask or (name.endswith("chosen") and not topk)
        torch.testing.assert_close(fn("batchmean"), sums[name] / (n_kept if masked else lead[0]), atol=1e-6,
                                   rtol=1e-5)
