"""A served teacher for on-policy distillation: asynchronous teacher-forced scoring of the student's tokens.

The trainers (:class:`fastdistill.GKDTrainer`, :class:`fastdistill.GRPOTrainer`) take a teacher given as
an ``http(s)://`` base URL or an :class:`~fastdistill.teacher.OpenAIServerTeacher` and never load its
weights. Each row (prompt ids + completion ids, the student's exact tokens) is one request, sent as
soon as the completion exists, on a thread pool of ``max_concurrency`` workers; the trainer keeps
working (the next micro-batch, the reward sandbox) and collects the answers only when its loss needs
them. A row that cannot be scored after retries is reported as an exception in its slot (never as a
zero divergence); :meth:`ServedTeacher.check_failures` stops training above a failed fraction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from fastdistill.teacher.server import (
    AlignmentError,
    OpenAIServerTeacher,
    TeacherServerError,
)

logger = logging.getLogger(__name__)

__all__ = ["PendingScores", "ServedTeacher", "TeacherFailureError", "is_teacher_url"]

PROBE_STRINGS = ("x = [1, 2, 3]", "def test_add():\n    assert add(1, 2) == 3\n", "SELECT name FROM users;")


class TeacherFailureError(RuntimeError):
    """More of a step's rows failed on the served teacher than ``teacher_max_failed_fraction`` allows."""


def is_teacher_url(value) -> bool:
    """Whether ``value`` names a served teacher (an ``http://`` / ``https://`` base URL)."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _answer_fault(err: BaseException) -> bool:
    """A bad answer (not an HTTP status): malformed JSON, truncated or misaligned log-probs. Retried like
    a transient error, since a healthy server answers the same request correctly."""
    import json

    import openai

    return isinstance(err, (AlignmentError, json.JSONDecodeError, openai.APIResponseValidationError, KeyError,
                            TypeError))


class PendingScores:
    """The teacher's answers for a batch of rows, arriving in the background.

    ``results()`` blocks until every row is answered and returns, per row, a dict (``teacher_logprobs``,
    ``teacher_topk_ids``, ``teacher_topk_logprobs``) or the exception that failed it.
    """

    def __init__(self, futures: list[Future], server: str):
        self.futures = futures
        self.server = server
        self.submitted = time.perf_counter()
        self.wait_s = 0.0
        self.latency_s = 0.0

    def done(self) -> bool:
        return all(f.done() for f in self.futures)

    def results(self) -> list:
        start = time.perf_counter()
        out = []
        for future in self.futures:
            err = future.exception()
            out.append(err if err is not None else future.result())
        end = time.perf_counter()
        self.wait_s = end - start
        finished = [getattr(f, "finished_at", end) for f in self.futures]
        self.latency_s = (max(finished) if finished else end) - self.submitted
        return out


class ServedTeacher:
    """Teacher-forced scoring of student token sequences on an OpenAI-compatible (vLLM) server.

    Args:
        teacher: an :class:`OpenAIServerTeacher`, or a base URL (``http://host:8000/v1``) to build one.
        tokenizer: the student's tokenizer (the server must share it; checked by :meth:`connect`).
        model: model name on the server (default: the teacher's, else the only one ``/v1/models`` lists).
        top_k: teacher log-probs per position (``prompt_logprobs=k``); 0 = sampled-token log-probs only.
        timeout_s: seconds before one request attempt times out (URL only).
        max_concurrency: requests in flight at once (URL only).
        max_retries: retries of one request after a transient HTTP error or a bad answer.
        max_failed_fraction: above this fraction of failed rows in one step, training stops.
    """

    def __init__(self, teacher, tokenizer, *, model: str | None = None, top_k: int = 20, timeout_s: float = 60.0,
                 max_concurrency: int = 16, max_retries: int = 4, max_failed_fraction: float = 0.5,
                 backoff: float = 0.25):
        if top_k < 0:
            raise ValueError(f"teacher_top_k must be >= 0, got {top_k}")
        if not 0.0 <= max_failed_fraction <= 1.0:
            raise ValueError(f"teacher_max_failed_fraction must be in [0, 1], got {max_failed_fraction}")
        if isinstance(teacher, str):
            if not is_teacher_url(teacher):
                raise ValueError(f"a served teacher is an http(s):// base URL, got {teacher!r}")
            teacher = OpenAIServerTeacher(teacher, model or "", timeout=timeout_s, max_concurrency=max_concurrency,
                                          max_retries=max_retries, backoff=backoff, return_tokens_as_token_ids=True)
        elif not isinstance(teacher, OpenAIServerTeacher):
            raise TypeError(f"expected an OpenAIServerTeacher or a URL, got {type(teacher).__name__}")
        elif model:
            teacher.model = model
        teacher.tokenizer = tokenizer
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.top_k = int(top_k)
        self.max_retries = teacher.max_retries
        self.backoff = teacher.backoff
        self.max_failed_fraction = float(max_failed_fraction)
        self._pool = ThreadPoolExecutor(max_workers=teacher.max_concurrency, thread_name_prefix="served-teacher")
        self._lock = threading.Lock()
        self.rows_scored = 0
        self.rows_failed = 0
        self.rows_sampled = 0  # sequence-level KD: completions the teacher wrote
        self.samples_failed = 0

    @property
    def name(self) -> str:
        return f"{self.teacher.base_url} ({self.teacher.model})"

    # ---- start-up checks ---------------------------------------------------------------------
    def connect(self, probes: Sequence[str] = ()) -> ServedTeacher:
        """Check the server before training: the model is listed, the tokenizer is the student's, and
        ``top_k`` log-probs are served. Raises :class:`TeacherServerError` / ``TokenizerMismatchError``."""
        try:
            models = self.teacher.list_models()
        except Exception as err:
            raise TeacherServerError(f"cannot reach the teacher server at {self.teacher.base_url}: "
                                     f"{type(err).__name__}: {err}") from err
        if not self.teacher.model:
            if len(models) != 1:
                raise TeacherServerError(
                    f"{self.teacher.base_url} serves {models}; set teacher_server_model to one of them")
            self.teacher.model = models[0]
        elif self.teacher.model not in models:
            raise TeacherServerError(f"{self.teacher.base_url} does not serve {self.teacher.model!r} "
                                     f"(it serves {models}); set teacher_server_model")
        self.teacher.check_tokenizer([*PROBE_STRINGS, *probes])
        ids = self.tokenizer(PROBE_STRINGS[1], add_special_tokens=False)["input_ids"]
        try:
            self._score_row(ids[:4], ids[4:8])
        except AlignmentError as err:
            raise TeacherServerError(f"{self.name} cannot serve teacher_top_k={self.top_k} log-probs: {err}") from err
        except TeacherServerError:
            raise
        except Exception as err:
            raise TeacherServerError(
                f"{self.name}: the start-up scoring request failed: {type(err).__name__}: {err}") from err
        logger.info("served teacher %s: tokenizer checked, top-%d log-probs per token", self.name, self.top_k)
        return self

    # ---- scoring -----------------------------------------------------------------------------
    def _retrying(self, fn, *args):
        """``fn(*args)``, retried with backoff after a bad answer (HTTP errors are retried inside the client)."""
        attempt = 0
        while True:
            try:
                return fn(*args)
            except TeacherServerError:
                raise
            except Exception as err:
                if not _answer_fault(err) or attempt >= self.max_retries:
                    raise
                delay = min(self.teacher.max_backoff, self.backoff * 2**attempt)
                logger.warning("teacher answer rejected (%s: %s); retry %d/%d in %.2fs", type(err).__name__, err,
                               attempt + 1, self.max_retries, delay)
                time.sleep(delay)
                attempt += 1

    def _score_row(self, prompt_ids: list[int], completion_ids: list[int]) -> dict:
        return self._retrying(self.teacher.score_tokens, prompt_ids, completion_ids, self.top_k)

    def _submit(self, fn, rows: Sequence[tuple]) -> PendingScores:
        futures = []
        for args in rows:
            future = self._pool.submit(self._retrying, fn, *args)
            future.add_done_callback(lambda f: setattr(f, "finished_at", time.perf_counter()))
            futures.append(future)
        return PendingScores(futures, self.name)

    def submit(self, rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> PendingScores:
        """Send one scoring request per ``(prompt_ids, completion_ids)`` row now; returns at once."""
        return self._submit(self.teacher.score_tokens,
                            [(list(prompt), list(completion), self.top_k) for prompt, completion in rows])

    def submit_samples(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       temperature: float) -> PendingScores:
        """Ask the teacher to sample a completion of every prompt (token ids) now; returns at once.

        ``results()`` then gives, per prompt, the completion's token ids or the exception that failed it
        (sequence-level KD: the teacher writes the completions the student is trained on)."""
        return self._submit(self.teacher.generate_tokens,
                            [(list(prompt), max_new_tokens, temperature) for prompt in prompts])

    def account(self, results: list, rows_in_step: int, failed_in_step: int, *, sampled: bool = False) -> None:
        """Count a batch's results, and stop when the step's failed rows exceed the allowed fraction.

        ``failed_in_step`` counts the step's failed rows so far (this batch included), ``rows_in_step``
        every row the step sends. A :class:`TeacherServerError` in any slot is raised at once.
        ``sampled``: the results are the teacher's samples (:meth:`submit_samples`), not scores.
        """
        failures = [r for r in results if isinstance(r, BaseException)]
        with self._lock:
            if sampled:
                self.rows_sampled += len(results) - len(failures)
                self.samples_failed += len(failures)
            else:
                self.rows_scored += len(results) - len(failures)
                self.rows_failed += len(failures)
        for err in failures:
            if isinstance(err, TeacherServerError):
                raise err
        what = "sample" if sampled else "row"
        for err in failures:
            logger.warning("teacher %s failed, its row is left out of this step: %s: %s", what, type(err).__name__,
                           err)
        if rows_in_step and failed_in_step > self.max_failed_fraction * rows_in_step:
            causes = Counter(f"{type(e).__name__}: {str(e)[:200]}" for e in failures).most_common(1)
            cause = causes[0][0] if causes else "unknown"
            raise TeacherFailureError(
                f"the served teacher {self.name} failed {failed_in_step} of {rows_in_step} {what}s in this step "
                f"(more than teacher_max_failed_fraction={self.max_failed_fraction}); most common cause: {cause}"
            )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
