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

__all__ = ["AlignmentError", "OpenAIServerTeacher", "TeacherServerError"]


class AlignmentError(ValueError):
    """The tokens the server returned cannot be mapped onto the student's completion tokens."""


class TeacherServerError(RuntimeError):
    """The server cannot serve the teacher as configured (refuses ``k`` log-probs, unknown model, ...).

    Unlike a failed row this is not retried or skipped: every request would fail the same way.
    """


class _NoPromptLogprobs(Exception):
    """The server does not implement vLLM's ``prompt_logprobs`` (fall back to echo + logprobs)."""


def _refuses_k(err: BaseException) -> bool:
    """HTTP 400 because more log-probs were asked than the server's ``--max-logprobs`` allows."""
    import openai

    text = str(err).lower()
    return (isinstance(err, openai.BadRequestError) and "logprobs" in text
            and ("max allowed" in text or "max_logprobs" in text or "greater than" in text))


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
        scoring: how :meth:`score_tokens` asks for teacher-forced log-probs. ``"prompt_logprobs"``:
            vLLM's ``prompt_logprobs=k`` on a token-id prompt with ``max_tokens=1`` (ids come back as
            integers with ranks: nothing to map). ``"echo"``: the OpenAI ``echo`` + ``logprobs`` shape.
            ``"auto"`` (default): ``prompt_logprobs``, falling back to ``echo`` for good when the server
            answers without ``prompt_logprobs`` (it does not implement them).
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
        scoring: str = "auto",
    ):
        if scoring not in ("auto", "prompt_logprobs", "echo"):
            raise ValueError(f"scoring must be 'auto', 'prompt_logprobs' or 'echo', got {scoring!r}")
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
        self.scoring = scoring
        self._mode = "echo" if scoring == "echo" else "prompt_logprobs"

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
            except Exception as err:
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
        as_ids = self.send_token_ids or request.get("as_ids") or request.get("text") is None
        prompt = expected if as_ids else request["text"]
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
        try:
            start = self._align(tokens, expected, n, where)
        except AlignmentError:
            if self.send_token_ids or not self._boundary_merge(lp, tokens, request):
                raise
            # the server merged a token across the prompt/completion boundary (e.g. " " + "[" -> " ["): the
            # text cannot express the student's split, so score exactly the student's tokens as ids instead
            logger.debug("%s: BPE merge at the prompt/completion boundary; re-scoring as token ids", where)
            return self._score_one({**request, "as_ids": True}, top_k)
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

    def _boundary_merge(self, lp, tokens: list[str], request: dict) -> bool:
        """Whether the server's tokens line up with the student's by character offsets everywhere except
        inside tokens that straddle the prompt/completion boundary (the same tokenizer, merging across it)."""
        tok = self.tokenizer
        student = list(request["prompt_ids"]) + list(request["completion_ids"])
        lengths = [len(tok.decode([i])) for i in student]
        cut = sum(lengths[: len(request["prompt_ids"])])
        total = sum(lengths)
        s_bounds, pos = set(), 0
        for length in lengths:
            pos += length
            s_bounds.add(pos)
        server_text = [tok.decode([ids[0]]) if len(ids := self._ids_for_string(t)) == 1 else t for t in tokens]
        offsets = list(getattr(lp, "text_offset", None) or [])
        if len(offsets) != len(tokens):
            offsets, pos = [], 0
            for text in server_text:
                offsets.append(pos)
                pos += len(text)
        spans = [(o, o + len(t)) for o, t in zip(offsets, server_text) if o + len(t) <= total]  # not generated tokens
        if not spans or spans[-1][1] != total:
            return False
        if not any(o < cut < e for o, e in spans):
            return False
        # every server token boundary from the straddling token on must be a student token boundary
        return all(e in s_bounds for o, e in spans if e > cut)

    def score_tokens(self, prompt_ids: Sequence[int], completion_ids: Sequence[int], top_k: int,
                     where: str = "row") -> dict:
        """Teacher-forced scores of ``completion_ids`` after ``prompt_ids`` (the student's exact tokens).

        Returns ``{"teacher_logprobs": [n], "teacher_topk_ids": [n][k], "teacher_topk_logprobs": [n][k]}``
        (the top-k entries only when ``top_k > 0``), sorted by teacher log-prob. Raises
        :class:`AlignmentError` for an answer that does not fit the request (fewer than ``top_k`` entries,
        a wrong length, a missing token), :class:`TeacherServerError` when the server refuses ``top_k``.
        Transient HTTP errors are retried as in every request.
        """
        if not prompt_ids:
            raise ValueError(f"{where}: the prompt is empty; the teacher has no log-prob for the first token")
        if self._mode == "prompt_logprobs":
            try:
                return self._score_prompt_logprobs(list(prompt_ids), list(completion_ids), top_k, where)
            except _NoPromptLogprobs:
                if self.scoring == "prompt_logprobs":
                    raise TeacherServerError(f"{self.base_url}: the server answered without prompt_logprobs; it "
                                             "does not implement vLLM's prompt_logprobs (use scoring='echo')") from None
                logger.warning("%s: no prompt_logprobs in the answer; falling back to echo + logprobs for this run",
                               self.base_url)
                self._mode = "echo"
        request = {"row": where, "prompt_ids": list(prompt_ids), "completion_ids": list(completion_ids), "text": None}
        return self._call_refusable(lambda: self._score_one(request, top_k), top_k, "logprobs")

    def generate_tokens(self, prompt_ids: Sequence[int], max_new_tokens: int, temperature: float,
                        seed: int | None = None, where: str = "row") -> list[int]:
        """Sample a completion of ``prompt_ids`` on the server and return it as token ids (sequence-level KD).

        One ``/v1/completions`` request with the prompt as token ids, ``max_tokens=max_new_tokens``,
        ``temperature`` and ``logprobs=1`` with vLLM's ``return_tokens_as_token_ids``, so the answer names
        every generated token by id (text would be re-tokenized ambiguously). A server that names tokens by
        string must name each one of exactly one id of the tokenizer, else :class:`AlignmentError`. When
        the server stopped on its end-of-sequence token without returning it (vLLM leaves it out of the
        text), it is appended, as local ``generate`` keeps it.
        """
        if not prompt_ids:
            raise ValueError(f"{where}: the prompt is empty")
        body = {**self.extra_body, "return_tokens_as_token_ids": True}
        kwargs = {"seed": seed} if seed is not None else {}
        response = self._call(where, self.client.completions.create, model=self.model, prompt=list(prompt_ids),
                              max_tokens=int(max_new_tokens), temperature=float(temperature), logprobs=1,
                              extra_body=body, **kwargs)
        if not response.choices or response.choices[0].logprobs is None:
            raise AlignmentError("the server's sample holds no logprobs, so its tokens cannot be read as ids")
        choice = response.choices[0]
        ids = []
        for t, token in enumerate(choice.logprobs.tokens or []):
            candidates = self._ids_for_string(token)
            if len(candidates) != 1:
                raise AlignmentError(f"generated token {t} ({token!r}) names {len(candidates)} token ids, not one "
                                     "(serve the teacher with vLLM, which honours return_tokens_as_token_ids)")
            ids.append(candidates[0])
        if not ids or len(ids) > max_new_tokens:
            raise AlignmentError(f"the server generated {len(ids)} tokens for max_tokens={max_new_tokens}")
        eos = self.tokenizer.eos_token_id
        stop_reason = (getattr(choice, "model_extra", None) or {}).get("stop_reason")
        if (choice.finish_reason == "stop" and stop_reason is None and eos is not None and ids[-1] != eos
                and len(ids) < max_new_tokens):
            ids.append(eos)
        return ids

    def _call_refusable(self, fn, top_k: int, field: str):
        try:
            return fn()
        except Exception as err:
            if _refuses_k(err):
                raise TeacherServerError(
                    f"{self.base_url} refuses {field}={max(top_k, 1)}: {err}. Start the server with a larger "
                    f"`--max-logprobs` (vllm serve <teacher> --max-logprobs {max(top_k, 1)}) or lower teacher_top_k"
                ) from err
            raise

    def _score_prompt_logprobs(self, prompt_ids: list[int], completion_ids: list[int], top_k: int, where: str) -> dict:
        import openai

        ids = prompt_ids + completion_ids
        body = {**self.extra_body, "prompt_logprobs": top_k}
        body.pop("return_tokens_as_token_ids", None)  # prompt_logprobs are keyed by id already

        def request():
            return self._call(where, self.client.completions.create, model=self.model, prompt=ids, max_tokens=1,
                              temperature=0.0, extra_body=body)

        try:
            response = self._call_refusable(request, top_k, "prompt_logprobs")
        except openai.BadRequestError as err:
            if "prompt_logprobs" in str(err) and self.scoring == "auto":  # a server that forbids unknown fields
                raise _NoPromptLogprobs from err
            raise
        if not response.choices:
            raise AlignmentError("the server answered with no choices")
        choice = response.choices[0]
        entries = getattr(choice, "prompt_logprobs", None)
        if entries is None:
            entries = (getattr(choice, "model_extra", None) or {}).get("prompt_logprobs")
        if entries is None:
            raise _NoPromptLogprobs
        if len(entries) != len(ids):
            raise AlignmentError(f"the server returned prompt_logprobs for {len(entries)} positions, the request has "
                                 f"{len(ids)} tokens")
        logprobs, topk_ids, topk_lps = [], [], []
        for t in range(len(prompt_ids), len(ids)):
            entry = entries[t]
            if not isinstance(entry, dict) or not entry:
                raise AlignmentError(
                    f"the server returned no prompt_logprobs at completion token {t - len(prompt_ids)}")
            parsed = []
            for key, value in entry.items():
                if not isinstance(value, dict) or not isinstance(value.get("logprob"), (int, float)):
                    raise AlignmentError(f"malformed prompt_logprobs entry {key!r}: {value!r:.80}")
                parsed.append((int(key), float(value["logprob"]), value.get("rank")))
            actual = next((lp for i, lp, _ in parsed if i == ids[t]), None)
            if actual is None:
                raise AlignmentError(f"the server's prompt_logprobs at completion token {t - len(prompt_ids)} miss "
                                     f"the token itself ({ids[t]})")
            logprobs.append(actual)
            if top_k:
                # the prompt's own token is listed even when it is not among the top k: keep ranks 1..k
                ranked = sorted((p for p in parsed if p[2] is None or p[2] <= top_k), key=lambda p: -p[1])[:top_k]
                if len(ranked) < top_k:
                    raise AlignmentError(
                        f"the server returned {len(ranked)} top log-probs at completion token "
                        f"{t - len(prompt_ids)}, fewer than teacher_top_k={top_k} (truncated answer, or a server "
                        "started with a smaller --max-logprobs)"
                    )
                topk_ids.append([p[0] for p in ranked])
                topk_lps.append([p[1] for p in ranked])
        out = {"teacher_logprobs": logprobs}
        if top_k:
            out["teacher_topk_ids"], out["teacher_topk_logprobs"] = topk_ids, topk_lps
        return out

    def list_models(self) -> list[str]:
        """Model names the server lists at ``/v1/models``."""
        return [m.id for m in self._call("models", self.client.models.list).data]

    def tokenize(self, text: str) -> list[int] | None:
        """The server's token ids for ``text`` from vLLM's ``/tokenize`` (``None`` if the server has no such route)."""
        import json
        import urllib.error
        import urllib.request

        root = self.base_url.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root
        data = json.dumps({"model": self.model, "prompt": text, "add_special_tokens": False}).encode()
        request = urllib.request.Request(f"{root}/tokenize", data=data, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                tokens = json.loads(response.read()).get("tokens")
        except (urllib.error.URLError, OSError, ValueError, AttributeError):  # no such route, or not vLLM's shape
            return None
        return [int(t) for t in tokens] if isinstance(tokens, list) else None

    def check_tokenizer(self, probes: Sequence[str]) -> None:
        """Refuse a server whose tokenizer differs from the student's (``self.tokenizer``).

        Each probe string is tokenized by the server (vLLM's ``/tokenize``; without it, an echo request)
        and compared with the student's ids. Raises :class:`fastdistill.teacher.TokenizerMismatchError`.
        """
        from fastdistill.teacher.annotate import TokenizerMismatchError

        tok = self.tokenizer
        for text in probes:
            mine = tok(text, add_special_tokens=False)["input_ids"]
            theirs = self.tokenize(text)
            if theirs is not None:
                # a BOS the server adds regardless is not a mismatch
                if theirs != mine and theirs[1:] != mine:
                    raise TokenizerMismatchError(
                        f"{self.base_url} ({self.model}) tokenizes {text!r} as {theirs[:12]} but the student as "
                        f"{mine[:12]}: the server model does not share the student's tokenizer, so its log-probs "
                        "cannot be matched to the student's tokens"
                    )
                continue
            response = self._call("tokenizer probe", self.client.completions.create, model=self.model, prompt=text,
                                  echo=True, logprobs=1, max_tokens=1, temperature=0.0,
                                  extra_body=self.extra_body or None)
            lp = response.choices[0].logprobs if response.choices else None
            tokens = list(lp.tokens or []) if lp is not None else []
            try:
                self._align(tokens[: len(mine) + 1], mine, 0, "probe")
            except AlignmentError as err:
                raise TokenizerMismatchError(f"{self.base_url} ({self.model}) on {text!r}: {err}") from err

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
