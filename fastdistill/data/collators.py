"""Tokenization and collation for distillation batches that may carry stored teacher log-probs.

The teacher columns (``teacher_logprobs``: one float per completion token; ``teacher_topk_ids`` /
``teacher_topk_logprobs``: ``[tokens][k]``) are tied to the *completion tokens* as defined by
:func:`completion_token_ids`: the tokens that follow the prompt in the student's tokenization of the
whole conversation (for chat data this includes the end-of-turn tokens the chat template appends).
Annotators must produce exactly that many entries; the collator places them at the same positions as
the labels, so the loss can shift labels and teacher values together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are built, so `fastdistill annotate` can fail fast without it
    import torch

__all__ = ["completion_token_ids", "tokenize_example", "DistillationCollator"]

IGNORE_INDEX = -100


def _is_conversational(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and "role" in value[0]


def completion_token_ids(tokenizer, prompt, completion) -> tuple[list[int], list[int]]:
    """Return ``(prompt_ids, completion_ids)`` exactly as the trainers tokenize a row.

    ``prompt``/``completion`` are either strings (completion gets the EOS token appended) or chat
    messages (the chat template is applied to the prompt with ``add_generation_prompt=True`` and to
    the whole conversation; the completion is what follows the prompt).
    """
    if _is_conversational(prompt):
        completion_messages = (completion if _is_conversational(completion)
                               else [{"role": "assistant", "content": completion}])
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(list(prompt) + list(completion_messages), tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
        if full_ids[: len(prompt_ids)] == prompt_ids:
            return prompt_ids, full_ids[len(prompt_ids) :]
        # A token merged across the boundary (e.g. the template's "\n" with a completion that starts with
        # newlines). The text still splits cleanly, so tokenize the two sides separately: a valid, if not
        # canonical, tokenization of the same text, and the same one for the teacher and the student.
        if not full_text.startswith(prompt_text):
            raise ValueError(
                "the chat template does not render the prompt as a prefix of the whole conversation; "
                "cannot tell completion tokens apart"
            )
        return prompt_ids, tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise ValueError("prompt and completion must both be strings or chat messages")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    return prompt_ids, completion_ids


def tokenize_example(example: Mapping[str, Any], tokenizer, max_length: int | None = None,
                     index: int | None = None) -> dict:
    """Tokenize one prompt/completion row and align its teacher columns with the completion tokens.

    Truncation (to ``max_length`` tokens) removes completion tokens from the end, and the teacher
    columns with them, so alignment survives. Raises ``ValueError`` naming the row when a teacher
    column does not have one entry per completion token.
    """
    where = f"row {index}" if index is not None else "row"
    for field in ("prompt", "completion"):
        if field not in example:
            raise ValueError(f"{where}: missing field {field!r}")
    prompt_ids, completion_ids = completion_token_ids(tokenizer, example["prompt"], example["completion"])
    out: dict[str, Any] = {}
    n = len(completion_ids)
    for column in ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs"):
        values = example.get(column)
        if values is None:
            continue
        if len(values) != n:
            raise ValueError(
                f"{where}: {column!r} has {len(values)} entries but the completion has {n} tokens with this "
                "tokenizer; teacher columns must hold one entry per completion token (see "
                "fastdistill.data.collators.completion_token_ids)"
            )
        out[column] = list(values)
    if max_length is not None and len(prompt_ids) + n > max_length:
        keep = max(max_length - len(prompt_ids), 0)
        if keep == 0:
            raise ValueError(f"{where}: the prompt alone ({len(prompt_ids)} tokens) fills max_length={max_length}")
        completion_ids = completion_ids[:keep]
        out = {k: v[:keep] for k, v in out.items()}
    out["prompt_ids"] = prompt_ids
    out["completion_ids"] = completion_ids
    return out


def _pad(sequences: Sequence[Sequence], value, side: str, dtype) -> torch.Tensor:
    import torch

    width = max(len(s) for s in sequences)
    rows = []
    for s in sequences:
        pad = [value] * (width - len(s))
        rows.append(pad + list(s) if side == "left" else list(s) + pad)
    return torch.tensor(rows, dtype=dtype)


class DistillationCollator:
    """Pad tokenized rows into a GKD batch.

    Output keys: ``input_ids`` / ``attention_mask`` / ``labels`` (right-padded, labels ``-100`` on the
    prompt and padding), ``prompts`` / ``prompt_attention_mask`` (left-padded, for on-policy
    generation as TRL's GKD expects) and, when the rows carry them, ``teacher_logprobs`` ``(B, L)``,
    ``teacher_topk_ids`` / ``teacher_topk_logprobs`` ``(B, L, k)`` placed at the label positions.

    Rows must hold ``prompt_ids``/``completion_ids`` (see :func:`tokenize_example`); raw rows with
    ``prompt``/``completion`` are tokenized on the fly.
    """

    def __init__(self, tokenizer, max_length: int | None = None):
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token first")
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        rows = [
            ex if "completion_ids" in ex else {**ex, **tokenize_example(ex, self.tokenizer, self.max_length)}
            for ex in examples
        ]
        pad_id = self.tokenizer.pad_token_id
        full = [list(r["prompt_ids"]) + list(r["completion_ids"]) for r in rows]
        labels = [[IGNORE_INDEX] * len(r["prompt_ids"]) + list(r["completion_ids"]) for r in rows]
        batch = {
            "input_ids": _pad(full, pad_id, "right", torch.long),
            "attention_mask": _pad([[1] * len(f) for f in full], 0, "right", torch.long),
            "labels": _pad(labels, IGNORE_INDEX, "right", torch.long),
            "prompts": _pad([r["prompt_ids"] for r in rows], pad_id, "left", torch.long),
            "prompt_attention_mask": _pad([[1] * len(r["prompt_ids"]) for r in rows], 0, "left", torch.long),
        }
        if all(r.get("teacher_logprobs") is not None for r in rows):
            batch["teacher_logprobs"] = _pad(
                [[0.0] * len(r["prompt_ids"]) + list(r["teacher_logprobs"]) for r in rows], 0.0, "right", torch.float32
            )
        if all(r.get("teacher_topk_ids") is not None for r in rows):
            k = len(rows[0]["teacher_topk_ids"][0])
            if any(len(step) != k for r in rows for step in r["teacher_topk_ids"]):
                raise ValueError("all rows must carry the same number k of teacher top-k entries per token")
            batch["teacher_topk_ids"] = _pad(
                [[[0] * k] * len(r["prompt_ids"]) + list(r["teacher_topk_ids"]) for r in rows],
                [0] * k, "right", torch.long,
            )
            batch["teacher_topk_logprobs"] = _pad(
                [[[0.0] * k] * len(r["prompt_ids"]) + list(r["teacher_topk_logprobs"]) for r in rows],
                [0.0] * k,
                "right",
                torch.float32,
            )
        return batch
