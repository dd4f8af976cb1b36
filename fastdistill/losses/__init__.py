"""Divergences between student and teacher distributions (pure torch, no trainer code).

Layout: :mod:`~fastdistill.losses.core` (masks, reductions, chunk sizes), :mod:`~fastdistill.losses.kernels`
(the per-chunk math and which implementation runs it; :mod:`~fastdistill.losses.triton_kernels` holds the
optional Triton kernels), :mod:`~fastdistill.losses.divergences` (losses on logits) and
:mod:`~fastdistill.losses.fused` (losses from hidden states and ``lm_head`` weights).
"""

from fastdistill.losses.core import default_chunk_size
from fastdistill.losses.divergences import jsd_loss, reverse_kl_on_chosen, reverse_kl_on_logits
from fastdistill.losses.fused import fused_jsd_loss, fused_reverse_kl_on_chosen

__all__ = [
    "jsd_loss",
    "reverse_kl_on_logits",
    "reverse_kl_on_chosen",
    "default_chunk_size",
    "fused_jsd_loss",
    "fused_reverse_kl_on_chosen",
]
