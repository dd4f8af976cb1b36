"""Divergences between student and teacher distributions (pure torch, no trainer code)."""

from fastdistill.losses.divergences import default_chunk_size, jsd_loss, reverse_kl_on_chosen, reverse_kl_on_logits
from fastdistill.losses.fused import fused_jsd_loss, fused_reverse_kl_on_chosen
from fastdistill.losses.partition import partition_jsd, topk_partition_loss

__all__ = [
    "jsd_loss",
    "reverse_kl_on_logits",
    "reverse_kl_on_chosen",
    "default_chunk_size",
    "fused_jsd_loss",
    "fused_reverse_kl_on_chosen",
    "partition_jsd",
    "topk_partition_loss",
]
