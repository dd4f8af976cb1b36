"""``annotate``: add teacher completions and log-probs to a dataset, resumably."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastdistill.data.collators import completion_token_ids

logger = logging.getLogger(__name__)

__all__ = ["annotate", "AnnotationReport", "AnnotationError", "TokenizerMismatchError", "AnnotationCache"]

TEACHER_COLUMNS = ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")
CACHE_FILE = "annotations.jsonl"


class AnnotationError(RuntimeError):
    """A row could not be annotated (the message names the row and the reason)."""


class TokenizerMismatchError(ValueError):
    """The student's and the teacher's tokenizers differ, so per-token log-probs cannot be aligned."""


@dataclasses.dataclass
class AnnotationReport:
    """What one :func:`annotate` call did.

    Attributes:
        rows_in: rows of the input dataset.
        rows_out: rows of the output (``rows_in * num_samples`` when sampling, minus failures).
        rows_cached: output rows whose teacher values came from the cache (not requested again).
        requests: teacher scoring requests made in this call (unique rows not in the cache).
        tokens: completion tokens carried by the output rows.
        tokens_scored: completion tokens scored by the teacher in this call.
        seconds: wall time of the call.
        failures: ``{"row": input row index, "reason": ...}`` for every row left out.
    """

    rows_in: int = 0
    rows_out: int = 0
    rows_cached: int = 0
    requests: int = 0
    tokens: int = 0
    tokens_scored: int = 0
    seconds: float = 0.0
    failures: list[dict] = dataclasses.field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens scored per second in this call."""
        return self.tokens_scored / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tokens_per_s"] = self.tokens_per_s
        return out


class AnnotationCache:
    """Append-only JSONL store of teacher results keyed by content hash, in ``cache_dir/annotations.jsonl``.

    Each record is ``{"key": sha256, "value": ...}`` on one line, flushed and fsynced when written, so
    a crash loses at most the record being written. On load, a truncated last line (a crash
    mid-write) is dropped with a warning; a corrupt line elsewhere is an error. A key is written at
    most once. With ``cache_dir=None`` the cache lives in memory only. One process per cache
    directory at a time.
    """

    def __init__(self, cache_dir: str | os.PathLike | None):
        self.data: dict[str, Any] = {}
        self.path: Path | None = None
        self._handle = None
        if cache_dir is None:
            return
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        if self.path.exists():
            self._load()
        self._handle = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            logger.warning(
                "%s: dropping a truncated last record (%d bytes) left by an interrupted run", self.path, len(raw) - cut
            )
            raw = raw[:cut]
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
                handle.flush()
                os.fsync(handle.fileno())
        for line_no, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                self.data[record["key"]] = record["value"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f"{self.path}: line {line_no} is not a cache record ({err}); remove or fix it"
                ) from None
        logger.info("%s: %d cached results", self.path, len(self.data))

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __getitem__(self, key: str):
        return self.data[key]

    def __len__(self) -> int:
        return len(self.data)

    def put(self, key: str, value) -> None:
        """Store ``value`` under ``key`` (durably when on disk); a key already present is left as is."""
        if key in self.data:
            return
        self.data[key] = value
        if self._handle is not None:
            self._handle.write(json.dumps({"key": key, "value": value}) + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], Mapping) and "role" in value[0]


def _hash(payload: dict) -> str:
    return hashlib.sha256(
        json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    ).hexdigest()


def _tokenizer_fingerprint(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    blob = json.dumps(
        [sorted(vocab.items()), tokenizer.eos_token, getattr(tokenizer, "chat_template", None)], default=str
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _resolve_teacher(teacher, tokenizer):
    from fastdistill.teacher.local import LocalTeacher
    from fastdistill.teacher.server import OpenAIServerTeacher

    if isinstance(teacher, (LocalTeacher, OpenAIServerTeacher)):
        if tokenizer is not None:
            teacher.tokenizer = tokenizer
        return teacher
    return LocalTeacher(teacher, tokenizer=tokenizer)


def _check_tokenizers(teacher_tok, student_tok, probes: list[tuple[int, Any, Any]]) -> None:
    if student_tok is None or student_tok is teacher_tok:
        return
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    if t_vocab != s_vocab:
        differing = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))
        token = differing[0][0] if differing else "?"
        raise TokenizerMismatchError(
            f"the student and teacher tokenizers differ (vocabularies of {len(s_vocab)} and {len(t_vocab)} tokens; "
            f"e.g. {token!r} is id {s_vocab.get(token)} for the student and {t_vocab.get(token)} for the teacher). "
            "Teacher log-probs are stored per student token, which needs both to share one tokenizer; annotate with a "
            "teacher of the student's family, or distill from sampled completions only"
        )
    for row, prompt, completion in probes:
        if completion_token_ids(student_tok, prompt, completion) != completion_token_ids(
            teacher_tok, prompt, completion
        ):
            raise TokenizerMismatchError(
                f"row {row}: the student and teacher tokenizers share a vocabulary but tokenize this row differently "
                "(different chat template or special tokens?); teacher log-probs would not align with the student's "
                "tokens"
            )


def _check_result(result: Any, n: int, top_k: int) -> str | None:
    if not isinstance(result, dict) or "teacher_logprobs" not in result:
        return "the teacher returned no teacher_logprobs"
    values = result["teacher_logprobs"]
    if len(values) != n:
        return f"the teacher returned {len(values)} log-probs for {n} completion tokens"
    if any(not isinstance(v, (int, float)) or math.isnan(v) or v > 1e-4 for v in values):
        return "the teacher returned a log-prob that is NaN or > 0"
    if top_k:
        ids, lps = result.get("teacher_topk_ids"), result.get("teacher_topk_logprobs")
        if (
            ids is None
            or lps is None
            or len(ids) != n
            or len(lps) != n
            or any(len(a) != top_k or len(b) != top_k for a, b in zip(ids, lps))
        ):
            return f"the teacher's top-k columns are not [{n}][{top_k}]"
    return None


def _score_text(tokenizer, prompt, completion) -> str:
    """The text whose tokenization is prompt + completion tokens (what a server scores teacher-forced)."""
    if _is_chat(prompt):
        messages = completion if _is_chat(completion) else [{"role": "assistant", "content": completion}]
        return tokenizer.apply_chat_template(list(prompt) + list(messages), tokenize=False)
    return prompt + completion + (tokenizer.eos_token or "")


def annotate(
    ds,
    teacher,
    *,
    prompt_column: str = "prompt",
    completion_column: str | None = None,
    num_samples: int = 1,
    top_k: int = 0,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    tokenizer=None,
    student_tokenizer=None,
    seed: int | None = None,
    on_error: str = "raise",
    return_report: bool = False,
    progress: bool = True,
):
    """Add the teacher's log-probs (and, without ``completion_column``, its completions) to ``ds``.

    With ``completion_column`` set, each row's existing completion is scored teacher-forced: the
    output adds ``teacher_logprobs`` (one float per completion token, the tokens being those of
    :func:`fastdistill.data.collators.completion_token_ids` — the ones the GKD trainer trains on)
    and, when ``top_k > 0``, ``teacher_topk_ids`` / ``teacher_topk_logprobs`` (``[tokens][top_k]``,
    sorted by decreasing log-prob). Without it, ``num_samples`` completions are sampled per prompt
    (``temperature``, ``max_new_tokens``; ``temperature=0`` is greedy) and each becomes an output row
    with ``completion`` (same format as the prompt: string or one assistant message),
    ``teacher_sample_index``, ``teacher_sample_logprobs`` (the log-probs of the generated tokens as
    the teacher produced them) and the teacher columns above, computed teacher-forced on the
    sampled text so they align with the student's tokens.

    Args:
        ds: a ``datasets.Dataset`` with ``prompt_column`` (string or chat messages).
        teacher: a ``transformers`` causal LM, a path to one, a :class:`~fastdistill.teacher.LocalTeacher`
            or an :class:`~fastdistill.teacher.OpenAIServerTeacher`.
        prompt_column: column holding the prompts.
        completion_column: column holding completions to score; ``None`` samples new ones.
        num_samples: completions sampled per prompt (sampling mode only).
        top_k: also store the teacher's ``top_k`` most likely tokens per position (0: don't).
        max_new_tokens: generation length limit (sampling mode).
        temperature: sampling temperature (sampling mode); stored log-probs are always at temperature 1.
        batch_size: rows per forward pass of a local teacher (server teachers send one request per row).
        cache_dir: directory of the resumable cache (see :class:`AnnotationCache`): results are
            keyed by the sha256 of teacher identity, tokenizer, prompt, completion and parameters,
            written as they arrive, and not requested again by a later call.
        tokenizer: the teacher's tokenizer (default: loaded with a teacher given as a path, else
            ``student_tokenizer``). Required for server teachers.
        student_tokenizer: the student's tokenizer; must equal the teacher's (else
            :class:`TokenizerMismatchError`). Completion tokens are counted with it.
        seed: random seed for sampling (passed to the server as ``seed``).
        on_error: ``"raise"`` (default; stop at the first failed row with :class:`AnnotationError`)
            or ``"skip"`` (leave failed rows out and list them in the report).
        return_report: return ``(dataset, AnnotationReport)`` instead of the dataset.
        progress: show a tqdm progress bar.

    Returns:
        The annotated ``datasets.Dataset`` (rows in input order), or ``(dataset, report)``.
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if top_k < 0 or num_samples < 1 or batch_size < 1 or max_new_tokens < 1 or temperature < 0:
        raise ValueError("need top_k >= 0, num_samples >= 1, batch_size >= 1, max_new_tokens >= 1, temperature >= 0")
    for column in (prompt_column, completion_column):
        if column is not None and column not in ds.column_names:
            raise ValueError(f"column {column!r} is not in the dataset (columns: {ds.column_names})")
    teacher = _resolve_teacher(teacher, tokenizer if tokenizer is not None else None)
    if teacher.tokenizer is None:
        teacher.tokenizer = student_tokenizer
    if teacher.tokenizer is None:
        raise ValueError("no tokenizer: pass tokenizer= (the teacher's) and/or student_tokenizer=")
    tok = student_tokenizer if student_tokenizer is not None else teacher.tokenizer
    prompts = ds[prompt_column]
    for i, prompt in enumerate(prompts):
        if not (isinstance(prompt, str) and prompt) and not _is_chat(prompt):
            raise ValueError(
                f"row {i}: {prompt_column!r} must be a non-empty string or chat messages, got {prompt!r:.80}"
            )
    cache = AnnotationCache(cache_dir)
    report = AnnotationReport(rows_in=len(ds))
    failed: dict[int, str] = {}
    base_key = {"teacher": teacher.describe(), "tokenizer": _tokenizer_fingerprint(tok)}

    def fail(row: int, reason: str, err: BaseException | None = None):
        if on_error == "raise":
            raise AnnotationError(f"row {row}: {reason}") from err
        if row not in failed:
            logger.warning("row %d left out: %s", row, reason)
            failed[row] = reason

    try:
        # ---- items to score: (input row, sample index, completion, sample logprobs) ----------
        if completion_column is not None:
            completions = ds[completion_column]
            items = [(i, None, completions[i], None) for i in range(len(ds))]
            _check_tokenizers(
                teacher.tokenizer, student_tokenizer, [(i, prompts[i], completions[i]) for i in range(min(len(ds), 4))]
            )
        else:
            _check_tokenizers(
                teacher.tokenizer, student_tokenizer, [(i, prompts[i], "x") for i in range(min(len(ds), 4))]
            )
            samples = _sample_phase(
                teacher,
                tok,
                prompts,
                cache,
                base_key,
                num_samples,
                max_new_tokens,
                temperature,
                batch_size,
                seed,
                fail,
                progress,
            )
            items = []
            for i in range(len(ds)):
                for s, sample in enumerate(samples.get(i, [])):
                    completion = (
                        [{"role": "assistant", "content": sample["text"]}] if _is_chat(prompts[i]) else sample["text"]
                    )
                    items.append((i, s, completion, sample["sample_logprobs"]))

        # ---- teacher-forced scoring, cached ---------------------------------------------------
        results: list[dict | None] = [None] * len(items)
        lengths: list[int] = [0] * len(items)
        positions_by_key: dict[str, list[int]] = {}
        requests: list[dict] = []
        for pos, (row, _, completion, _) in enumerate(items):
            if row in failed:
                continue
            try:
                prompt_ids, comp_ids = completion_token_ids(tok, prompts[row], completion)
            except Exception as err:  # noqa: BLE001
                fail(row, f"cannot tokenize prompt/completion: {err}", err)
                continue
            lengths[pos] = len(comp_ids)
            key = _hash({**base_key, "mode": "score", "prompt": prompts[row], "completion": completion, "top_k": top_k})
            if key in cache:
                results[pos] = cache[key]
                report.rows_cached += 1
            elif key in positions_by_key:
                positions_by_key[key].append(pos)
            else:
                positions_by_key[key] = [pos]
                requests.append(
                    {
                        "row": row,
                        "key": key,
                        "prompt_ids": prompt_ids,
                        "completion_ids": comp_ids,
                        "text": _score_text(tok, prompts[row], completion),
                    }
                )
        report.requests = len(requests)
        logger.info("scoring %d rows with the teacher (%d from the cache)", len(requests), report.rows_cached)
        bar = tqdm(
            total=len(items),
            initial=len(items) - sum(len(p) for p in positions_by_key.values()),
            desc="teacher scoring",
            unit="row",
            disable=not progress,
        )
        try:
            for j, result in teacher.score(requests, top_k=top_k, batch_size=batch_size):
                request = requests[j]
                n = len(request["completion_ids"])
                positions = positions_by_key[request["key"]]
                problem = (
                    f"{type(result).__name__}: {result}"
                    if isinstance(result, BaseException)
                    else _check_result(result, n, top_k)
                )
                if problem is not None:
                    for pos in positions:
                        fail(items[pos][0], problem, result if isinstance(result, BaseException) else None)
                else:
                    cache.put(request["key"], result)
                    for pos in positions:
                        results[pos] = result
                    report.tokens_scored += n
                bar.update(len(positions))
                bar.set_postfix(tokens=report.tokens_scored, refresh=False)
        finally:
            bar.close()
    finally:
        cache.close()

    # ---- assemble the output ----------------------------------------------------------------
    keep = [pos for pos in range(len(items)) if results[pos] is not None and items[pos][0] not in failed]
    out = ds.select([items[pos][0] for pos in keep])
    new_columns: dict[str, list] = {"teacher_logprobs": [results[pos]["teacher_logprobs"] for pos in keep]}
    if top_k:
        new_columns["teacher_topk_ids"] = [results[pos]["teacher_topk_ids"] for pos in keep]
        new_columns["teacher_topk_logprobs"] = [results[pos]["teacher_topk_logprobs"] for pos in keep]
    if completion_column is None:
        new_columns["completion"] = [items[pos][2] for pos in keep]
        new_columns["teacher_sample_index"] = [items[pos][1] for pos in keep]
        new_columns["teacher_sample_logprobs"] = [items[pos][3] for pos in keep]
    stale = [c for c in (*TEACHER_COLUMNS, *new_columns) if c in out.column_names]
    if stale:
        logger.info("replacing existing columns %s", sorted(set(stale)))
        out = out.remove_columns(sorted(set(stale)))
    for name, values in new_columns.items():
        out = out.add_column(name, values)
    report.rows_out = len(out)
    report.tokens = sum(lengths[pos] for pos in keep)
    report.failures = [{"row": row, "reason": reason} for row, reason in sorted(failed.items())]
    report.seconds = time.perf_counter() - started
    logger.info(
        "annotated %d rows (%d from cache, %d failed): %d tokens scored in %.1fs (%.0f tokens/s)",
        report.rows_out,
        report.rows_cached,
        len(report.failures),
        report.tokens_scored,
        report.seconds,
        report.tokens_per_s,
    )
    return (out, report) if return_report else out


def _sample_phase(
    teacher, tok, prompts, cache, base_key, num_samples, max_new_tokens, temperature, batch_size, seed, fail, progress
):
    """Sample completions for every prompt (cached per prompt); returns ``{row: [sample, ...]}``."""
    from tqdm.auto import tqdm

    samples: dict[int, list[dict]] = {}
    positions_by_key: dict[str, list[int]] = {}
    requests: list[dict] = []
    for row, prompt in enumerate(prompts):
        key = _hash(
            {
                **base_key,
                "mode": "sample",
                "prompt": prompt,
                "num_samples": num_samples,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "seed": seed,
            }
        )
        if key in cache:
            samples[row] = cache[key]
            continue
        if key in positions_by_key:  # a repeated prompt shares its samples (ask for more with num_samples)
            positions_by_key[key].append(row)
            continue
        chat = _is_chat(prompt)
        text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) if chat else prompt
        positions_by_key[key] = [row]
        requests.append(
            {
                "row": row,
                "key": key,
                "messages": [dict(m) for m in prompt] if chat else None,
                "text": text,
                "prompt_ids": tok(text, add_special_tokens=False)["input_ids"],
            }
        )
    logger.info(
        "sampling %d completions for each of %d prompts (%d from the cache)",
        num_samples,
        len(requests),
        len(prompts) - len(requests),
    )
    with tqdm(
        total=len(prompts),
        initial=len(prompts) - len(requests),
        desc="teacher sampling",
        unit="prompt",
        disable=not progress,
    ) as bar:
        for j, result in teacher.sample(
            requests, num_samples, max_new_tokens, temperature, batch_size=batch_size, seed=seed
        ):
            request = requests[j]
            if isinstance(result, BaseException):
                for row in positions_by_key[request["key"]]:
                    fail(row, f"sampling failed: {type(result).__name__}: {result}", result)
            else:
                cache.put(request["key"], result)
                for row in positions_by_key[request["key"]]:
                    samples[row] = result
            bar.update(len(positions_by_key[request["key"]]))
    return samples
