"""Naive full-vocabulary references for the distillation losses, shared by every loss test.

Each formula materialises the whole distribution and uses no chunking, no in-place kernels and no
clamping, so a fast path that disagrees with it is wrong. Callers pass float64 tensors where the
test wants an fp64 reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_jsd(student_logits, teacher_logits, beta, temperature=1.0):
    """Per-position generalized JSD (TRL's formula) in float64; beta 0 is KL(t||s), beta 1 is KL(s||t)."""
    s = F.log_softmax(student_logits.double() / temperature, -1)
    t = F.log_softmax(teacher_logits.double() / temperature, -1)
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logaddexp(s + torch.log1p(torch.tensor(-beta, dtype=torch.float64)),
                        t + torch.log(torch.tensor(beta, dtype=torch.float64)))
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


def naive_reverse_kl(student_logits, teacher_logits, temperature=1.0):
    """Per-position KL(student || teacher) over the whole vocabulary."""
    s = F.log_softmax(student_logits / temperature, -1)
    t = F.log_softmax(teacher_logits / temperature, -1)
    return (s.exp() * (s - t)).sum(-1)


def naive_partition_kl(student_logits, ids, teacher_lp, temperature=1.0):
    """Reverse KL between {listed tokens, rest} coarse-grainings, from a full log-softmax (no clamping)."""
    s_lp = F.log_softmax(student_logits / temperature, -1).gather(-1, ids)
    q, p = s_lp.exp(), teacher_lp.exp()
    listed = (q * (s_lp - teacher_lp)).sum(-1)
    q_rest, p_rest = 1 - q.sum(-1), 1 - p.sum(-1)
    return listed + q_rest * (torch.log(q_rest) - torch.log(p_rest))
