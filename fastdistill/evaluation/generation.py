"""Batch inference: generate pytest files for each row's code and write them to JSONL.

Generation is kept apart from scoring (:mod:`fastdistill.evaluation.metrics`) so one set of
completions can be scored several ways (kill rate, speed) without sampling twice, and so
completions from any source (a server, a colleague's JSONL) can be scored the same way.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["GenerationSettings", "generate", "load_model", "prepare_rows", "read_jsonl", "write_jsonl"]


@dataclass
class GenerationSettings:
    """Sampling settings of :func:`generate`.

    Attributes:
        max_new_tokens: most tokens generated per completion.
        temperature: 0 means greedy decoding; > 0 samples.
        top_p: nucleus sampling threshold (only when sampling).
        top_k: top-k sampling (0 = off; only when sampling).
        num_samples: completions per row (each becomes one output row, ``sample`` = 0..n-1).
        batch_size: prompts per ``model.generate`` call (left-padded).
        seed: torch seed set once before generating, so the same settings give the same output.
        repetition_penalty: passed to ``generate`` (1.0 = off).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    batch_size: int = 8
    seed: int = 0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        from fastdistill.validation import Problems

        p = Problems("GenerationSettings")
        p.number(self.max_new_tokens, "max_new_tokens", minimum=1, integer=True)
        p.number(self.temperature, "temperature", minimum=0)
        p.number(self.top_p, "top_p", minimum=0, exclusive_minimum=True, maximum=1)
        p.number(self.top_k, "top_k", minimum=0, integer=True)
        p.number(self.num_samples, "num_samples", minimum=1, integer=True)
        p.number(self.batch_size, "batch_size", minimum=1, integer=True)
        p.number(self.seed, "seed", integer=True)
        p.number(self.repetition_penalty, "repetition_penalty", minimum=0, exclusive_minimum=True)
        p.raise_if_any()
        if self.num_samples > 1 and self.temperature == 0:
            raise ValueError("num_samples > 1 needs temperature > 0 (greedy decoding gives identical samples)")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file into a list of dicts (blank lines skipped).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file and line for
    an empty file, a line that is not UTF-8 or not JSON, or a line that is not a JSON object.
    """
    from fastdistill.files import JsonlLineError, iter_jsonl

    path = os.fspath(path)
    try:
        rows = list(iter_jsonl(path))
    except JsonlLineError as err:
        raise ValueError(f"{path}: {err.describe(position=False)}") from None
    if not rows:
        raise ValueError(f"{path}: the file is empty (no rows)")
    return rows


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """Write rows as JSONL atomically (temporary file renamed on success; parent folder created); returns the path."""
    from fastdistill.files import atomic_open

    path = os.fspath(path)
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def prepare_rows(dataset, *, code_column: str = "code", prompt_column: str = "prompt",
                 module_name: str = "solution") -> list[dict]:
    """Normalise an evaluation dataset to a list of dicts with ``index``, ``name``, ``code``, ``prompt``.

    ``dataset`` is a ``datasets.Dataset``, a list of dicts, or a path to a JSON/JSONL file. Each row
    needs ``code_column``; when it has no ``prompt_column`` (or the prompt is the bundled examples'
    plain string), the prompt is built with :func:`fastdistill.data.generate_tests_prompt`.
    Extra columns (``tests``, ``module_name``...) are kept.
    """
    from fastdistill.data import generate_tests_prompt

    if isinstance(dataset, (str, os.PathLike)):
        path = os.fspath(dataset)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no such dataset file: {path}")
        if path.endswith(".jsonl"):
            dataset = read_jsonl(path)
        else:
            with open(path, encoding="utf-8") as handle:
                dataset = json.load(handle)
            if isinstance(dataset, Mapping) and "data" in dataset:
                dataset = dataset["data"]
    rows = [dict(r) for r in dataset]
    if not rows:
        raise ValueError("the evaluation dataset is empty")
    out = []
    for i, row in enumerate(rows):
        if code_column not in row or not isinstance(row[code_column], str) or not row[code_column].strip():
            raise ValueError(f"row {i}: missing or empty code column {code_column!r} (columns: {sorted(row)})")
        row = dict(row)
        row["code"] = row[code_column]
        module = row.get("module_name") or module_name
        prompt = row.get(prompt_column)
        if not isinstance(prompt, list):
            prompt = generate_tests_prompt(row["code"], module_name=module)
        row["prompt"] = prompt
        row.setdefault("name", str(i))
        row["module_name"] = module
        row["index"] = i
        out.append(row)
    return out


def load_model(model_or_path, tokenizer=None):
    """Return ``(model, tokenizer)`` from a path / Hub id or an already loaded model.

    A loaded model needs its tokenizer passed; a path loads both (``AutoModelForCausalLM`` and
    ``AutoTokenizer``) on CUDA when available, else CPU in float32.
    """
    import torch

    if isinstance(model_or_path, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = os.fspath(model_or_path)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        logger.info("loading %s on %s (%s)", path, device, dtype)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)
    else:
        model = model_or_path
        if not hasattr(model, "generate"):
            raise TypeError(f"expected a transformers causal LM or a path to one, got {type(model).__name__}")
        if tokenizer is None:
            raise ValueError("pass the tokenizer when giving an already loaded model")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _prompt_text(tokenizer, prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in prompt) + "\n\n"


def generate(model_or_path, dataset, out_jsonl: str | os.PathLike | None = None, *, tokenizer=None,
             settings: GenerationSettings | None = None, code_column: str = "code", prompt_column: str = "prompt",
             module_name: str = "solution", progress: bool = True, **setting_overrides) -> list[dict]:
    """Generate completions (pytest files) for every row of ``dataset``; optionally write JSONL.

    Args:
        model_or_path: a ``transformers`` causal LM (pass ``tokenizer`` too) or a path / Hub id.
        dataset: rows with a code column (see :func:`prepare_rows`).
        out_jsonl: where to write one JSON object per completion (None: do not write).
        settings: sampling settings; keyword overrides (``temperature=0.8``, ...) are applied on top.
        progress: show a tqdm bar over batches.

    Returns:
        One dict per (row, sample): the row's columns (``index``, ``name``, ``code``, ``prompt``...)
        plus ``sample`` and ``completion`` (the generated text, special tokens removed).

    Prompts are left-padded and batched; the model's mode is restored afterwards.
    """
    import torch
    from tqdm.auto import tqdm

    settings = settings or GenerationSettings()
    if setting_overrides:
        settings = GenerationSettings(**{**asdict(settings), **setting_overrides})
    rows = prepare_rows(dataset, code_column=code_column, prompt_column=prompt_column, module_name=module_name)
    model, tokenizer = load_model(model_or_path, tokenizer)
    device = next(model.parameters()).device
    jobs = [(row, s) for row in rows for s in range(settings.num_samples)]
    texts = [_prompt_text(tokenizer, row["prompt"]) for row, _ in jobs]
    sample = settings.temperature > 0
    gen_kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=sample, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, repetition_penalty=settings.repetition_penalty)
    if sample:
        gen_kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k or None)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    old_side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    results: list[dict] = []
    cpu_state = torch.random.get_rng_state()
    torch.manual_seed(settings.seed)
    try:
        starts = range(0, len(jobs), settings.batch_size)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
            batch_texts = texts[start:start + settings.batch_size]
            enc = tokenizer(batch_texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = model.generate(**enc, **gen_kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for (row, s), completion in zip(jobs[start:start + settings.batch_size], decoded):
                results.append({**row, "sample": s, "completion": completion})
    finally:
        torch.random.set_rng_state(cpu_state)
        tokenizer.padding_side = old_side
        model.train(was_training)
    if out_jsonl is not None:
        write_jsonl(results, out_jsonl)
        logger.info("wrote %d completions to %s", len(results), out_jsonl)
    return results
