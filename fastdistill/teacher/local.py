"""Teacher-forced scoring and sampling with a local ``transformers`` causal LM."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LocalTeacher"]


class LocalTeacher:
    """A local causal LM used as the teacher (see :func:`fastdistill.teacher.annotate`).

    Scoring is batched: requests are sorted by length so each batch holds rows of similar length,
    rows are left-padded (with explicit ``position_ids``, so padding does not shift positions) and
    each batch costs one forward pass. Only the last ``max completion length + 1`` positions are
    projected to the vocabulary (``logits_to_keep``), so long prompts do not pay for a
    ``(tokens, vocab)`` logits tensor.

    Args:
        model: a ``transformers`` causal LM, or a path / name that ``AutoModelForCausalLM`` loads.
        tokenizer: the teacher's tokenizer (loaded from ``model`` when it is a path and this is None).
        device: where to run (default: the model's device, or CUDA when available for a path).
        dtype: dtype to load a path with (default float32 on CPU, bfloat16 on CUDA).
    """

    def __init__(self, model, tokenizer=None, device=None, dtype=None):
        import torch

        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from transformers import AutoModelForCausalLM, AutoTokenizer

            path = str(model)
            if device is None:
                device = "cuda" if torch.cuda.is_available() else "cpu"
            if dtype is None:
                dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
            logger.info("loading teacher model from %s (%s, %s)", path, device, dtype)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(path)
        elif device is not None:
            model = model.to(device)
        if not hasattr(model, "forward") or not hasattr(model, "config"):
            raise TypeError(f"teacher must be a transformers causal LM or a path to one, got {type(model).__name__}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.name = str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def describe(self) -> dict:
        """Identity of the teacher, part of the cache key."""
        return {"kind": "local", "name": self.name}

    # ------------------------------------------------------------------------------------------
    # teacher-forced scoring
    # ------------------------------------------------------------------------------------------

    def score(self, requests: Sequence[dict], top_k: int = 0, batch_size: int = 8) -> Iterator[tuple[int, Any]]:
        """Score ``requests`` (dicts with ``prompt_ids`` and ``completion_ids``) batch by batch.

        Yields ``(position in requests, result)`` where result is a dict with ``teacher_logprobs``
        (and ``teacher_topk_ids`` / ``teacher_topk_logprobs`` when ``top_k > 0``), or the exception
        raised for that batch.
        """
        order = sorted(
            range(len(requests)), key=lambda i: len(requests[i]["prompt_ids"]) + len(requests[i]["completion_ids"])
        )
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            try:
                results = self._score_batch([requests[i] for i in chunk], top_k)
            except Exception as err:  # noqa: BLE001 - reported per row by the caller
                logger.warning(
                    "teacher forward failed for a batch of %d rows: %s: %s", len(chunk), type(err).__name__, err
                )
                results = [err] * len(chunk)
            yield from zip(chunk, results)

    def _score_batch(self, batch: Sequence[dict], top_k: int) -> list[dict]:
        import torch

        pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer is not None and self.tokenizer.pad_token_id is not None else 0
        )
        sequences = [list(r["prompt_ids"]) + list(r["completion_ids"]) for r in batch]
        for r in batch:
            if not r["prompt_ids"]:
                raise ValueError(
                    "the prompt tokenizes to zero tokens; the first completion token has no context to score"
                )
        width = max(len(s) for s in sequences)
        max_n = max(len(r["completion_ids"]) for r in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, seq in enumerate(sequences):
            input_ids[b, width - len(seq) :] = torch.tensor(seq)
            mask[b, width - len(seq) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs = {}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = max_n + 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=position_ids.to(self.device),
                use_cache=False,
                **kwargs,
            ).logits
        # logits[:, -1] predicts the token after the sequence; the completion's n tokens are predicted
        # by the n positions before it.
        logits = logits[:, -(max_n + 1) : -1]
        out = []
        for b, r in enumerate(batch):
            n = len(r["completion_ids"])
            row_logprobs = torch.log_softmax(logits[b, max_n - n :].float(), dim=-1)
            ids = torch.tensor(r["completion_ids"], device=row_logprobs.device)
            result = {"teacher_logprobs": row_logprobs.gather(1, ids[:, None])[:, 0].tolist()}
            if top_k:
                values, top_ids = row_logprobs.topk(top_k, dim=-1)
                result["teacher_topk_ids"] = top_ids.tolist()
                result["teacher_topk_logprobs"] = values.tolist()
            out.append(result)
        return out

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------

    def sample(
        self,
        requests: Sequence[dict],
        num_samples: int,
        max_new_tokens: int,
        temperature: float,
        batch_size: int = 8,
        seed: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Sample ``num_samples`` completions per request (dicts with ``prompt_ids``).

        Yields ``(position, samples)`` with ``samples`` a list of ``{"text", "sample_logprobs"}``:
        the decoded completion (special tokens dropped) and the teacher's log-prob (temperature 1,
        before any sampling transform) of each generated token, end-of-sequence token included.
        ``temperature=0`` decodes greedily.
        """

        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        order = sorted(range(len(requests)), key=lambda i: len(requests[i]["prompt_ids"]))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            try:
                results = self._sample_batch(
                    [requests[i]["prompt_ids"] for i in chunk], num_samples, max_new_tokens, temperature, pad_id, seed
                )
            except Exception as err:  # noqa: BLE001
                logger.warning(
                    "teacher generation failed for a batch of %d prompts: %s: %s", len(chunk), type(err).__name__, err
                )
                results = [err] * len(chunk)
            yield from zip(chunk, results)

    def _sample_batch(self, prompts, num_samples, max_new_tokens, temperature, pad_id, seed) -> list[list[dict]]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for b, p in enumerate(prompts):
            input_ids[b, width - len(p) :] = torch.tensor(p)
            mask[b, width - len(p) :] = 1
        # one row per sample (rather than num_return_sequences, which greedy decoding refuses)
        input_ids, mask = input_ids.repeat_interleave(num_samples, 0), mask.repeat_interleave(num_samples, 0)
        gen_kwargs = dict(
            max_new_tokens=max_new_tokens,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=pad_id,
        )
        if temperature > 0:
            gen_kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
        else:
            gen_kwargs.update(do_sample=False)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), **gen_kwargs
            )
        generated = out.sequences[:, width:].cpu()
        step_logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu()  # (B*n, T, V)
        chosen = step_logprobs.gather(2, generated[:, :, None])[:, :, 0]
        eos_ids = self.model.generation_config.eos_token_id
        eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        results: list[list[dict]] = [[] for _ in prompts]
        for row in range(generated.shape[0]):
            ids = generated[row].tolist()
            length = len(ids)
            for t, token in enumerate(ids):
                if token in eos_ids:
                    length = t + 1
                    break
            text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
            results[row // num_samples].append({"text": text, "sample_logprobs": chosen[row, :length].tolist()})
        return results
