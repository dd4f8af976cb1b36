"""Properties of the chunked divergences in ``fastdistill.losses``.

Every check runs on tiny shapes in a few milliseconds; references are either TRL's own
``GKDTrainer.generalized_jsd_loss`` or naive full-vocabulary formulas evaluated in float64.
"""

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from fastdistill.losses import jsd_loss, reverse_kl_on_chosen, reverse_kl_on_logits  # noqa: E402
from reference import naive_partition_kl as _naive_partition_kl  # noqa: E402
from reference import naive_reverse_kl as _naive_reverse_kl  # noqa: E402

B, T, V = 2, 5, 37


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _logits(seed=0, shape=(B, T, V), scale=3.0, dtype=torch.float32):
    return (torch.randn(shape, generator=_gen(seed)) * scale).to(dtype)


def _labels(seed=0, shape=(B, T), vocab=V):
    labels = torch.randint(0, vocab, shape, generator=_gen(seed + 100))
    labels[0, :2] = -100  # prompt positions
    labels[1, -1] = -100  # padding
    return labels


@pytest.fixture(scope="module")
def trl_jsd():
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


# ---------------------------------------------------------------------------------------------
# jsd_loss == TRL's generalized_jsd_loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "mean"])
@pytest.mark.parametrize("with_labels", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_equals_trl_values_and_grads(trl_jsd, beta, reduction, with_labels, temperature):
    labels = _labels() if with_labels else None
    s_ref, t_ref = _logits(1).requires_grad_(), _logits(2).requires_grad_()
    s_ours, t_ours = s_ref.detach().clone().requires_grad_(), t_ref.detach().clone().requires_grad_()

    ref = trl_jsd(s_ref, t_ref, labels=labels, beta=beta, temperature=temperature, reduction=reduction)
    if reduction == "mean":  # ours is the per-token mean; TRL's also averages over the vocabulary
        ref = ref * V
    ours = jsd_loss(s_ours, t_ours, beta=beta, temperature=temperature, mask=labels, reduction=reduction, chunk_size=3)
    assert ours.dtype == torch.float32 and ours.dim() == 0
    torch.testing.assert_close(ours, ref.detach(), atol=1e-5, rtol=1e-5)
    assert ours.item() > 0

    ref.backward()
    ours.backward()
    torch.testing.assert_close(s_ours.grad, s_ref.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t_ours.grad, t_ref.grad, atol=1e-5, rtol=1e-4)
    if with_labels:  # masked positions get no gradient
        assert torch.count_nonzero(s_ours.grad[labels == -100]) == 0


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_jsd_num_items_in_batch_equals_trl(trl_jsd, beta):
    labels = _labels()
    s_ref = _logits(3).requires_grad_()
    s_ours = s_ref.detach().clone().requires_grad_()
    t = _logits(4)
    ref = trl_jsd(s_ref, t, labels=labels, beta=beta, num_items_in_batch=torch.tensor(23))
    ours = jsd_loss(s_ours, t, beta=beta, mask=labels, num_items_in_batch=torch.tensor(23))
    torch.testing.assert_close(ours, ref.detach(), atol=1e-5, rtol=1e-5)
    ref.backward()
    ours.backward()
    torch.testing.assert_close(s_ours.grad, s_ref.grad, atol=1e-5, rtol=1e-4)


def test_jsd_none_reduction_is_per_position_trl_sum(trl_jsd):
    s, t = _logits(5), _logits(6)
    ref = trl_jsd(s, t, beta=0.3, reduction="none").sum(-1)
    ours = jsd_loss(s, t, beta=0.3, reduction="none")
    assert ours.shape == (B, T)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    labels = _labels()
    masked = jsd_loss(s, t, beta=0.3, mask=labels, reduction="none")
    assert torch.all(masked[labels == -100] == 0)
    torch.testing.assert_close(masked[labels != -100], ref[labels != -100], atol=1e-5, rtol=1e-5)


def test_jsd_identical_distributions_is_zero():
    s = _logits(7)
    for beta in (0.0, 0.5, 1.0):
        loss = jsd_loss(s, s + 5.0, beta=beta)  # a constant shift does not change the distribution
        assert abs(loss.item()) < 1e-5


# ---------------------------------------------------------------------------------------------
# reverse_kl_on_logits == naive full-vocabulary KL(student || teacher)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_mask", [False, True])
def test_reverse_kl_on_logits_equals_naive(temperature, with_mask):
    labels = _labels() if with_mask else None
    s64 = _logits(8).double().requires_grad_()
    t64 = _logits(9).double()
    per_pos = _naive_reverse_kl(s64, t64, temperature)
    if with_mask:
        keep = labels != -100
        ref = per_pos[keep].sum() / keep.sum()
    else:
        ref = per_pos.sum() / B  # TRL's batchmean without labels: / shape[0]
    ref.backward()

    s32 = s64.detach().float().requires_grad_()
    ours = reverse_kl_on_logits(s32, t64.float(), temperature=temperature, mask=labels, chunk_size=4)
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    ours.backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, atol=1e-5, rtol=1e-4)

    none = reverse_kl_on_logits(s32.detach(), t64.float(), temperature=temperature, reduction="none")
    torch.testing.assert_close(none.double(), per_pos.detach(), atol=1e-5, rtol=1e-5)


def test_reverse_kl_on_logits_is_jsd_beta_one():
    s, t = _logits(10), _logits(11)
    torch.testing.assert_close(reverse_kl_on_logits(s, t), jsd_loss(s, t, beta=1.0))


# ---------------------------------------------------------------------------------------------
# reverse_kl_on_chosen: the two-outcome / top-k partition estimator
# ---------------------------------------------------------------------------------------------


def _teacher(seed=20):
    t_logits = _logits(seed)
    return t_logits, F.log_softmax(t_logits, -1)


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_chosen_matches_naive_fp64_reference(temperature):
    labels = _labels()
    ids = labels.clamp(min=0)
    _, t_lp_full = _teacher()
    t_lp = t_lp_full.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    keep = labels != -100

    s64 = _logits(21).double().requires_grad_()
    per_pos = _naive_partition_kl(s64, ids.unsqueeze(-1), t_lp.double().unsqueeze(-1), temperature)
    ref = per_pos[keep].sum() / keep.sum()
    ref.backward()

    s32 = s64.detach().float().requires_grad_()
    ours = reverse_kl_on_chosen(s32, labels, t_lp, temperature=temperature, chunk_size=3)
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    ours.backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(s32.grad[~keep]) == 0


def test_topk_matches_naive_fp64_reference():
    k = 4
    _, t_lp_full = _teacher(22)
    topk_lp, topk_ids = t_lp_full.topk(k, -1)
    s64 = _logits(23).double().requires_grad_()
    ref = _naive_partition_kl(s64, topk_ids, topk_lp.double()).sum() / B
    ref.backward()
    s32 = s64.detach().float().requires_grad_()
    ours = reverse_kl_on_chosen(s32, teacher_topk_ids=topk_ids, teacher_topk_logprobs=topk_lp, chunk_size=4)
    torch.testing.assert_close(ours.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    ours.backward()
    torch.testing.assert_close(s32.grad.double(), s64.grad, atol=1e-5, rtol=1e-4)


def test_chosen_gradcheck_finite_differences():
    """Analytic gradient vs central finite differences (the kernel works in fp32, hence the loose tolerance)."""
    ids = torch.randint(0, 11, (3,), generator=_gen(24))
    t_lp = torch.log(torch.tensor([0.3, 0.05, 0.6], dtype=torch.float64))
    x = (torch.randn(3, 11, generator=_gen(25), dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: reverse_kl_on_chosen(z, ids, t_lp, reduction="sum"), (x,), eps=1e-3, atol=2e-3, rtol=1e-2
    )


def test_chosen_never_negative_random_and_adversarial():
    g = _gen(26)
    # random: arbitrary student logits and arbitrary (even non-normalisable) teacher log-probs
    s = torch.randn(64, 50, generator=g) * 8
    ids = torch.randint(0, 50, (64,), generator=g)
    t_lp = -torch.rand(64, generator=g) * 30
    assert (reverse_kl_on_chosen(s, ids, t_lp, reduction="none") >= 0).all()

    # adversarial: near-deterministic student, teacher log-prob 0 / -inf-ish / exactly the student's,
    # huge logits, ties, chosen token at the student's argmax or its argmin
    s = torch.zeros(8, 50)
    s[0, 3] = 1e4  # student certain of token 3
    s[1, 3] = -1e4  # student certain it is not token 3
    s[2] = 1e4  # all tied at a huge value
    s[3, 3] = 50.0
    s[4, 3] = 20.0
    s[5:] = torch.randn(3, 50, generator=g) * 100
    ids = torch.full((8,), 3)
    for t_value in (0.0, -1e-9, -1e-3, -0.69, -20.0, -1e4, float("-inf")):
        t_lp = torch.full((8,), t_value)
        out = reverse_kl_on_chosen(s, ids, t_lp, reduction="none")
        assert torch.isfinite(out).all(), t_value
        assert (out >= 0).all(), (t_value, out)
    own = F.log_softmax(s, -1)[:, 3]
    assert (reverse_kl_on_chosen(s, ids, own, reduction="none") >= 0).all()

    # top-k from real but extreme teacher distributions
    t_logits = torch.randn(8, 50, generator=g) * 100
    topk_lp, topk_ids = F.log_softmax(t_logits, -1).topk(5, -1)
    out = reverse_kl_on_chosen(s, teacher_topk_ids=topk_ids, teacher_topk_logprobs=topk_lp, reduction="none")
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_chosen_zero_iff_probabilities_match():
    labels = _labels()
    s = _logits(27).requires_grad_()
    own_lp = F.log_softmax(s.detach(), -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)

    loss = reverse_kl_on_chosen(s, labels, own_lp)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert s.grad.abs().max().item() < 1e-6

    for shift in (0.1, -0.1):  # teacher more / less confident than the student
        s.grad = None
        loss = reverse_kl_on_chosen(s, labels, own_lp + shift)
        loss.backward()
        assert loss.item() > 1e-5
        assert s.grad.abs().max().item() > 1e-4
    # gradient descent moves the student's chosen-token probability towards the teacher's
    with torch.no_grad():
        s_new = s - 1.0 * s.grad  # last step: teacher prob = own * exp(-0.1) < own
        keep = labels != -100
        q_old = own_lp.exp()[keep]
        q_new = F.log_softmax(s_new, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1).exp()[keep]
        assert (q_new <= q_old).all() and (q_new < q_old).any()

    # top-k variant: the teacher's top-k equals the student's own -> zero
    topk_ids = s.detach().topk(3, -1).indices
    topk_lp = F.log_softmax(s.detach(), -1).gather(-1, topk_ids)
    assert abs(reverse_kl_on_chosen(s.detach(), teacher_topk_ids=topk_ids, teacher_topk_logprobs=topk_lp).item()) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_partition_bounds_below_full_reverse_kl(temperature):
    """Data-processing inequality: chosen <= top-k <= full-vocabulary KL(student || teacher), per token."""
    g = _gen(28)
    n, v, k = 200, 40, 5
    s = torch.randn(n, v, generator=g) * 2
    t_logits = torch.randn(n, v, generator=g) * 2
    t_lp = F.log_softmax(t_logits, -1)
    topk_lp, topk_ids = t_lp.topk(k, -1)
    # the chosen token is one of the teacher's top-k, so the top-k partition refines {chosen, rest}
    chosen = topk_ids.gather(-1, torch.randint(0, k, (n, 1), generator=g)).squeeze(-1)
    chosen_lp = t_lp.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)

    # the student temperature applies to the student only; the teacher distribution is fixed
    full = (F.softmax(s / temperature, -1) * (F.log_softmax(s / temperature, -1) - t_lp)).sum(-1)
    two = reverse_kl_on_chosen(s, chosen, chosen_lp, temperature=temperature, reduction="none")
    topk = reverse_kl_on_chosen(
        s, teacher_topk_ids=topk_ids, teacher_topk_logprobs=topk_lp, temperature=temperature, reduction="none"
    )
    tol = 1e-5
    assert (two >= 0).all() and (two <= full + tol).all()
    assert (topk <= full + tol).all()
    assert (topk >= two - tol).all()
    assert (topk > two + 1e-4).float().mean() > 0.5  # a strictly tighter bound on most tokens


# ---------------------------------------------------------------------------------------------
# memory-bounded: chunking and reduced-precision inputs
# ---------------------------------------------------------------------------------------------


def test_chunk_size_does_not_change_results():
    labels = _labels()
    s0, t = _logits(30), _logits(31)
    ids = labels.clamp(min=0)
    t_lp = F.log_softmax(t, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    losses = {
        "jsd": lambda s, c: jsd_loss(s, t, beta=0.3, mask=labels, chunk_size=c),
        "rkl": lambda s, c: reverse_kl_on_logits(s, t, mask=labels, chunk_size=c),
        "chosen": lambda s, c: reverse_kl_on_chosen(s, labels, t_lp, chunk_size=c),
    }
    for name, fn in losses.items():
        results = []
        for chunk in (1, 3, 4, 7, None):
            s = s0.clone().requires_grad_()
            loss = fn(s, chunk)
            loss.backward()
            results.append((loss.detach(), s.grad))
        for loss, grad in results[1:]:
            torch.testing.assert_close(loss, results[0][0], atol=1e-6, rtol=1e-6, msg=name)
            torch.testing.assert_close(grad, results[0][1], atol=1e-7, rtol=1e-6, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_accumulate_in_fp32(dtype):
    labels = _labels()
    s_lp, t_lp_logits = _logits(32, dtype=dtype), _logits(33, dtype=dtype)
    s32, t32 = s_lp.float(), t_lp_logits.float()  # the same (rounded) values in fp32
    ids = labels.clamp(min=0)
    t_chosen = F.log_softmax(t32, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    cases = [
        (lambda s, t: jsd_loss(s, t, beta=0.5, mask=labels)),
        (lambda s, t: reverse_kl_on_logits(s, t, mask=labels)),
        (lambda s, t: reverse_kl_on_chosen(s, labels, t_chosen.to(dtype))),
    ]
    for fn in cases:
        s = s_lp.clone().requires_grad_()
        low = fn(s, t_lp_logits)
        assert low.dtype == torch.float32
        low.backward()
        assert s.grad.dtype == dtype
        s_ref = s32.clone().requires_grad_()
        ref = fn(s_ref, t32)
        ref.backward()
        # only the stored teacher log-probs were rounded to `dtype` in the chosen case
        torch.testing.assert_close(low, ref.detach(), atol=5e-3, rtol=5e-3)
        torch.testing.assert_close(s.grad.float(), s_ref.grad, atol=2e-3, rtol=2e-2)
    # with identical inputs the accumulation is exact fp32: no dtype-sized error at all
    torch.testing.assert_close(jsd_loss(s_lp, t_lp_logits, mask=labels), jsd_loss(s32, t32, mask=labels))


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_value_errors():
    s, t = _logits(40), _logits(41)
    labels = _labels()
    t_lp = torch.zeros(B, T)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        reverse_kl_on_chosen(s, labels, torch.zeros(B, T - 1))
    with pytest.raises(ValueError, match="chosen_ids"):
        reverse_kl_on_chosen(s, labels[:, :-1], t_lp)
    with pytest.raises(ValueError, match="mask"):
        reverse_kl_on_chosen(s, labels, t_lp, mask=torch.ones(B, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        jsd_loss(s, t, mask=torch.ones(B * T, dtype=torch.bool))
    for fn in (
        lambda: jsd_loss(s, t, reduction="avg"),
        lambda: reverse_kl_on_logits(s, t, reduction="avg"),
        lambda: reverse_kl_on_chosen(s, labels, t_lp, reduction="avg"),
    ):
        with pytest.raises(ValueError, match="unknown reduction"):
            fn()
    with pytest.raises(ValueError, match="vocabulary"):
        jsd_loss(s, _logits(42, shape=(B, T, V + 1)))
    with pytest.raises(ValueError, match="beta"):
        jsd_loss(s, t, beta=1.5)
    with pytest.raises(ValueError, match="top"):
        reverse_kl_on_chosen(s, teacher_topk_ids=torch.zeros(B, T, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        reverse_kl_on_chosen(s, torch.full((B, T), V), t_lp)
