"""An OpenAI-compatible inference server (vLLM, SGLang, TGI, ...) used as the teacher."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["OpenAIServerTeacher", "AlignmentError"]


class AlignmentError(ValueError):
    """The tokens the server returned cannot be mapped onto the student's completion tokens."""


def _is_transient(err: BaseException) -> bool:
    import openai

    if isinstance(err, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
        return True
    if isinstance(err, openai.APIStatusError):
        return err.status_code >= 500 or err.status_code in (408, 409, 429)
    return False


class OpenAIServerTeacher:
    """A teacher behind an OpenAI-compatible HTTP API, reached through the ``openai`` client.

    Teacher-forced scoring uses the completions API with ``echo=True, logprobs=max(top_k, 1),
    max_tokens=0``: the server returns a log-prob (and the top-k alternatives) for every token of
    the prompt, which holds the whole prompt + completion. The returned tokens (strings) are checked
    position by position against the student tokenizer's ids (see
    :func:`fastdistill.data.collators.completion_token_ids`); when they do not line up (the server
    model uses another tokenizer, or tokenizes the text differently) the row fails with
    :class:`AlignmentError` rather than storing misaligned numbers.

    Sampling uses chat/completions (chat prompts) or completions (string prompts) with log-probs;
    the sampled texts are then scored teacher-forced like any other completion.

    Requests run in a thread pool of ``max_concurrency`` workers; transient failures (HTTP 5xx,
    408/409/429, timeouts, connection errors) are retried ``max_retries`` times with exponential
    backoff and jitter (``backoff * 2**attempt``, capped at ``max_backoff`` seconds). Other errors
    (e.g. HTTP 400) fail the row at once.

    Args:
        base_url: server URL including ``/v1`` (e.g. ``http://localhost:8000/v1``).
        model: model name as the server knows it.
        api_key: API key (default ``"EMPTY"``, what local servers accept).
        max_concurrency: requests in flight at once.
        max_retries: retries per request after the first attempt.
        timeout: seconds before one attempt times out.
        backoff: first retry delay in seconds.
        max_backoff: cap on one retry delay.
        send_token_ids: send the prompt + completion as a list of token ids instead of text
            (vLLM supports it). Guarantees the server sees exactly the student's tokens; use it for
            string prompts, whose prompt and completion the student tokenizes separately.
        return_tokens_as_token_ids: ask the server (vLLM extension, sent in ``extra_body``) to
            return tokens as ``"token_id:<id>"``, which makes mapping top-k tokens to ids
            unambiguous. Without it, token strings are mapped through the tokenizer's vocabulary or
            their decoded text, and a string that maps to several ids fails the row.
        scoring_max_tokens: ``max_tokens`` of scoring requests (0; set 1 for servers that refuse 0 —
            the extra generated token is ignored).
        extra_body: extra fields sent with every request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 60.0,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        send_token_ids: bool = False,
        return_tokens_as_token_ids: bool = False,
        scoring_max_tokens: int = 0,
        extra_body: dict | None = None,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url
        self.model = model
        self.api_key = api_key or "EMPTY"
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.send_token_ids = send_token_ids
        self.return_tokens_as_token_ids = return_tokens_as_token_ids
        self.scoring_max_tokens = scoring_max_tokens
        self.extra_body = dict(extra_body or {})
        if return_tokens_as_token_ids:
            self.extra_body["return_tokens_as_token_ids"] = True
        self.tokenizer = None
        self.requests_sent = 0  # attempts, retries included
        self._lock = threading.Lock()
        self._client = None
        self._decoded: dict[str, list[int]] | None = None
        self._aborted = threading.Event()

    def describe(self) -> dict:
        """Identity of the teacher, part of the cache key."""
        # not the URL: a server restarted elsewhere is the same teacher (use another cache_dir for
        # another model served under the same name)
        return {"kind": "openai", "model": self.model, "send_token_ids": self.send_token_ids}

    @property
    def client(self):
        if self._client is None:
            import openai

            # retries are ours (explicit backoff, logged); the client's own are switched off
            self._client = openai.OpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=self.timeout, max_retries=0
            )
        return self._client

    # ------------------------------------------------------------------------------------------
    # retries and concurrency
    # ------------------------------------------------------------------------------------------

    def _call(self, what: str, fn, **kwargs):
        attempt = 0
        while True:
            with self._lock:
                self.requests_sent += 1
            try:
                return fn(**kwargs)
            except Exception as err:  # noqa: BLE001
                if not _is_transient(err) or attempt >= self.max_retries or self._aborted.is_set():
                    if _is_transient(err):
                        raise RuntimeError(
                            f"gave up after {attempt + 1} attempts: {type(err).__name__}: {err}"
                        ) from err
                    raise
                delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
                logger.warning(
                    "%s: %s: %s; retry %d/%d in %.2fs",
                    what,
                    type(err).__name__,
                    err,
                    attempt + 1,
                    self.max_retries,
                    delay,
                )
                time.sleep(delay)
                attempt += 1

    def _run_pool(self, jobs: Sequence, fn) -> Iterator[tuple[int, Any]]:
        """Run ``fn(job)`` for every job with bounded concurrency.

        Yields ``(index, result | exception)`` as the jobs finish.
        """
        pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="teacher")
        self._aborted.clear()
        pending = {}
        next_job = 0
        try:
            while pending or next_job < len(jobs):
                # keep at most 2x max_concurrency submitted, so an abort leaves little in flight
                while next_job < len(jobs) and len(pending) < 2 * self.max_concurrency:
                    pending[pool.submit(fn, jobs[next_job])] = next_job
                    next_job += 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    err = future.exception()
                    yield index, (err if err is not None else future.result())
        finally:
            # on abort (the caller stopped iterating) do not wait for requests still in flight:
            # their results are dropped, and they were never cached, so a resumed run asks again;
            # requests in flight stop retrying
            if pending:
                self._aborted.set()
            pool.shutdown(wait=not pending, cancel_futures=True)

    # ------------------------------------------------------------------------------------------
    # token mapping
    # ------------------------------------------------------------------------------------------

    def _ids_for_string(self, token: str) -> list[int]:
        """All ids a returned token string may denote."""
        if token.startswith("token_id:"):
            try:
                return [int(token[len("token_id:") :])]
            except ValueError:
                pass
        tok = self.tokenizer
        vocab_id = tok.convert_tokens_to_ids(token)
        candidates = (
            [vocab_id]
            if isinstance(vocab_id, int)
            and vocab_id != tok.unk_token_id
            and tok.convert_ids_to_tokens(vocab_id) == token
            else []
        )
        with self._lock:
            if self._decoded is None:
                decoded: dict[str, list[int]] = {}
                for i in range(len(tok)):
                    decoded.setdefault(tok.decode([i]), []).append(i)
                self._decoded = decoded
        for i in self._decoded.get(token, []):
            if i not in candidates:
                candidates.append(i)
        return candidates

    def _matches(self, token: str, token_id: int) -> bool:
        if token.startswith("token_id:"):
            return token == f"token_id:{token_id}"
        tok = self.tokenizer
        return token == tok.convert_ids_to_tokens(token_id) or token == tok.decode([token_id])

    def _align(self, tokens: list[str], expected: list[int], n_completion: int, where: str) -> int:
        """Return the index in ``tokens`` of the first completion token.

        Raises AlignmentError if the tokens do not match.
        """
        best = None
        for offset in (0, 1):  # the server may prepend a BOS token
            if len(tokens) < offset + len(expected):
                continue
            window = tokens[offset : offset + len(expected)]
            mismatch = next((i for i, (s, e) in enumerate(zip(window, expected)) if not self._matches(s, e)), None)
            if mismatch is None:
                return offset + len(expected) - n_completion
            if best is None or mismatch > best[1]:
                best = (offset, mismatch)
        if best is None:
            raise AlignmentError(
                f"the server returned {len(tokens)} tokens but the student tokenizes prompt + completion "
                f"into {len(expected)}; the server model does not share the student's tokenizer"
            )
        offset, i = best
        raise AlignmentError(
            f"server token {offset + i} is {tokens[offset + i]!r} but the student's token there is "
            f"{expected[i]} ({self.tokenizer.convert_ids_to_tokens(expected[i])!r}); teacher log-probs can only be "
            "stored per student token when the server model shares the student's tokenizer (for string prompts, try "
            "send_token_ids=True)"
        )

    def _topk(self, entries: dict[str, float] | None, top_k: int, where: str) -> tuple[list[int], list[float]]:
        if not entries:
            raise AlignmentError("the server returned no top log-probs")
        ranked = sorted(entries.items(), key=lambda kv: kv[1], reverse=True)[:top_k]
        if len(ranked) < top_k:
            raise AlignmentError(f"the server returned {len(ranked)} top log-probs, fewer than top_k={top_k}")
        ids, values = [], []
        for token, value in ranked:
            candidates = self._ids_for_string(token)
            if len(candidates) != 1:
                raise AlignmentError(
                    f"top-k token {token!r} maps to {len(candidates)} token ids {candidates[:5]}; "
                    "use return_tokens_as_token_ids=True (vLLM) for unambiguous ids"
                )
            ids.append(candidates[0])
            values.append(float(value))
        return ids, values

    # ------------------------------------------------------------------------------------------
    # scoring and sampling
    # ------------------------------------------------------------------------------------------

    def _score_one(self, request: dict, top_k: int) -> dict:
        where = f"row {request['row']}"
        expected = list(request["prompt_ids"]) + list(request["completion_ids"])
        n = len(request["completion_ids"])
        prompt = expected if self.send_token_ids else request["text"]
        response = self._call(
            where,
            self.client.completions.create,
            model=self.model,
            prompt=prompt,
            echo=True,
            logprobs=max(top_k, 1),
            max_tokens=self.scoring_max_tokens,
            temperature=0.0,
            extra_body=self.extra_body or None,
        )
        if not response.choices or response.choices[0].logprobs is None:
            raise AlignmentError("the server response holds no logprobs (does it support echo with logprobs?)")
        lp = response.choices[0].logprobs
        tokens, token_logprobs = list(lp.tokens or []), list(lp.token_logprobs or [])
        if len(tokens) != len(token_logprobs):
            raise AlignmentError(f"the server returned {len(tokens)} tokens but {len(token_logprobs)} log-probs")
        start = self._align(tokens, expected, n, where)
        values = token_logprobs[start : start + n]
        if any(v is None for v in values):
            raise AlignmentError("the server returned no log-prob for some completion tokens")
        result = {"teacher_logprobs": [float(v) for v in values]}
        if top_k:
            top = list(lp.top_logprobs or [])
            pairs = [
                self._topk(top[start + t] if start + t < len(top) else None, top_k, f"completion token {t}")
                for t in range(n)
            ]
            result["teacher_topk_ids"] = [p[0] for p in pairs]
            result["teacher_topk_logprobs"] = [p[1] for p in pairs]
        return result

    def score(self, requests: Sequence[dict], top_k: int = 0, batch_size: int = 8) -> Iterator[tuple[int, Any]]:
        """Score requests (dicts with ``row``, ``text``, ``prompt_ids``, ``completion_ids``) concurrently.

        Yields ``(position in requests, result dict | exception)`` as requests finish. ``batch_size``
        is unused (one request per row; the server batches).
        """
        if self.tokenizer is None:
            raise ValueError(
                "OpenAIServerTeacher needs the tokenizer the server model shares with the student (pass tokenizer=)"
            )
        return self._run_pool(requests, lambda r: self._score_one(r, top_k))

    def _sample_one(
        self, request: dict, num_samples: int, max_new_tokens: int, temperature: float, seed: int | None
    ) -> list[dict]:
        where = f"row {request['row']}"
        common = dict(
            model=self.model,
            n=num_samples,
            max_tokens=max_new_tokens,
            temperature=temperature,
            extra_body=self.extra_body or None,
        )
        if seed is not None:
            common["seed"] = seed
        if request["messages"] is not None:
            response = self._call(
                where, self.client.chat.completions.create, messages=request["messages"], logprobs=True, **common
            )
            samples = []
            for choice in sorted(response.choices, key=lambda c: c.index):
                content = choice.logprobs.content if choice.logprobs is not None and choice.logprobs.content else []
                samples.append(
                    {"text": choice.message.content or "", "sample_logprobs": [float(c.logprob) for c in content]}
                )
        else:
            response = self._call(where, self.client.completions.create, prompt=request["text"], logprobs=1, **common)
            samples = []
            for choice in sorted(response.choices, key=lambda c: c.index):
                values = (
                    choice.logprobs.token_logprobs
                    if choice.logprobs is not None and choice.logprobs.token_logprobs
                    else []
                )
                samples.append(
                    {"text": choice.text or "", "sample_logprobs": [float(v) for v in values if v is not None]}
                )
        if len(samples) != num_samples:
            raise ValueError(f"asked the server for {num_samples} samples, got {len(samples)}")
        return samples

    def sample(
        self,
        requests: Sequence[dict],
        num_samples: int,
        max_new_tokens: int,
        temperature: float,
        batch_size: int = 8,
        seed: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Sample completions for requests (dicts with ``row``, ``messages`` (chat) or ``text``) concurrently.

        Yields ``(position, samples | exception)``; ``samples`` is a list of ``{"text", "sample_logprobs"}``
        with the log-probs the server returned for the generated tokens.
        """
        return self._run_pool(requests, lambda r: self._sample_one(r, num_samples, max_new_tokens, temperature, seed))
