"""Shared builders for the trainer and teacher tests (tiny offline models, small fixed datasets)."""

from __future__ import annotations

import torch

from fastdistill.data import load_supervised_dataset
from fastdistill.data.collators import completion_token_ids
from fastdistill.testing import tiny_causal_lm

ROWS = [
    {
        "prompt": f"Write a pytest test for add({i}, {i + 1}).",
        "completion": f"def test_add():\n    assert add({i}, {i + 1}) == {2 * i + 1}",
    }
    for i in range(8)
]


def tiny_teacher(seed: int = 1, tokenizer=None, peaky: float = 8.0):
    """A tiny, confident teacher: ``tiny_causal_lm(seed)`` with its head scaled by ``peaky``; ``(model, tokenizer)``.

    A random init is near-uniform; a peaked distribution gives distillation something to learn and
    makes top-k and log-prob checks meaningful. Pass ``tokenizer`` to share one with a student.
    """
    teacher, tokenizer = tiny_causal_lm(seed=seed, tokenizer=tokenizer)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(peaky)
    return teacher, tokenizer


def gkd_config(tmp_path, **overrides):
    """A small CPU GKDConfig (fp32, one log line per step, nothing saved); ``overrides`` replace fields."""
    from fastdistill import GKDConfig

    kwargs = dict(output_dir=str(tmp_path), bf16=False, max_steps=30, per_device_train_batch_size=4,
                  learning_rate=3e-3, lmbda=0.0, logging_steps=1, report_to=[], save_strategy="no", max_length=96,
                  seed=0)
    return GKDConfig(**{**kwargs, **overrides})


def student_and_teacher(peaky: float = 20.0):
    """A tiny student and a *different*, confident teacher sharing one tokenizer."""
    student, tokenizer = tiny_causal_lm(seed=0, hidden_size=32, intermediate_size=64)
    teacher, _ = tiny_teacher(seed=1, tokenizer=tokenizer, peaky=peaky)
    return student, teacher, tokenizer


def dataset(rows=ROWS):
    return load_supervised_dataset(rows)


def teacher_logprob_columns(teacher, tokenizer, ds, top_k: int = 0):
    """Annotate rows with the teacher's log-prob of each completion token (and optionally top-k)."""

    def annotate(example):
        prompt_ids, completion_ids = completion_token_ids(tokenizer, example["prompt"], example["completion"])
        with torch.no_grad():
            logits = teacher(torch.tensor([prompt_ids + completion_ids])).logits[0]
        logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1].float(), -1)
        out = {"teacher_logprobs": logprobs.gather(1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()}
        if top_k:
            values, ids = logprobs.topk(top_k, dim=-1)
            out["teacher_topk_ids"], out["teacher_topk_logprobs"] = ids.tolist(), values.tolist()
        return out

    return ds.map(annotate)
