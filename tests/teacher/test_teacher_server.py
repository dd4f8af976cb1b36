"""fastdistill.teacher against a real HTTP server on 127.0.0.1 speaking the OpenAI API with log-probs.

The server (stdlib ``http.server``, one thread per request) serves a tiny model behind
``/v1/completions`` (echo + logprobs for teacher-forced scoring, or generation) and
``/v1/chat/completions`` (generation with ``logprobs.content``), in the response schema the
``openai`` client parses. It can be told to fail requests (HTTP 500), to answer slowly (past the
client's timeout) or to refuse (HTTP 400), and it counts what it was asked.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import torch

from fastdistill.data import load_supervised_dataset
from fastdistill.data.collators import completion_token_ids
from fastdistill.teacher import AlignmentError, AnnotationError, OpenAIServerTeacher, annotate
from fastdistill.testing import tiny_causal_lm, tiny_tokenizer
from fastdistill.testing.teacher_server import JsonRequestHandler, sample_tokens
from helpers import tiny_teacher

ROWS = [
    {
        "prompt": f"Write a pytest test for add({i}, {i + 1})." + " Be thorough." * (i % 3),
        "completion": f"def test_add():\n    assert add({i}, {i + 1}) == {2 * i + 1}" + "\n    assert True" * (i % 4),
    }
    for i in range(8)
]


class FakeOpenAIServer:
    """A minimal OpenAI-compatible server around a causal LM. Use as a context manager.

    ``behaviour(n, path, body)`` (optional) is called for the n-th request (1-based) and returns
    ``"ok"``, ``"500"``, ``"400"`` or ``"slow"`` (sleep ``slow_s`` before answering).
    ``token_format``: ``"decoded"`` (each token's decoded text, like vLLM) or ``"vocab"`` (the
    vocabulary string); a request with ``return_tokens_as_token_ids`` gets ``"token_id:<id>"``.
    """

    def __init__(self, model, tokenizer, behaviour=None, token_format="decoded", slow_s=1.0):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.behaviour = behaviour or (lambda n, path, body: "ok")
        self.token_format = token_format
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.requests: list[tuple[str, dict, str]] = []  # (path, body, what happened)
        server = self

        class Handler(JsonRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    n = len(server.requests) + 1
                    action = server.behaviour(n, self.path, body)
                    server.requests.append((self.path, body, action))
                if action == "slow":
                    time.sleep(server.slow_s)
                if action in ("500", "400"):
                    return self._send(int(action), {"error": {"message": f"injected {action}", "type": "server_error"}})
                try:
                    if self.path.endswith("/chat/completions"):
                        payload = server.chat(body)
                    elif self.path.endswith("/completions"):
                        payload = server.completions(body)
                    else:
                        return self._send(404, {"error": {"message": "not found"}})
                except Exception as err:  # noqa: BLE001 - report to the client like a real server
                    return self._send(400, {"error": {"message": f"{type(err).__name__}: {err}"}})
                self._send(200, payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, path_end="/completions", action="ok"):
        return sum(1 for p, _, a in self.requests if p.endswith(path_end) and a == action)

    # ---- model -------------------------------------------------------------------------------

    def _token(self, token_id: int, as_ids: bool) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        if self.token_format == "vocab":
            return self.tokenizer.convert_ids_to_tokens(token_id)
        return self.tokenizer.decode([token_id])

    def _logprobs(self, ids):
        with self.model_lock, torch.no_grad():
            return torch.log_softmax(self.model(torch.tensor([ids])).logits[0].float(), -1)

    def _generate(self, ids, max_tokens, temperature, generator):
        return sample_tokens(self._logprobs, ids, max_tokens, temperature=temperature, generator=generator,
                             eos_token_id=self.tokenizer.eos_token_id)

    def completions(self, body):
        prompt = body["prompt"]
        ids = (
            list(prompt) if isinstance(prompt, list) else self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        )
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        k = body.get("logprobs")
        max_tokens = body.get("max_tokens", 16)
        generator = torch.Generator().manual_seed(body.get("seed") or 0)
        choices = []
        for index in range(body.get("n", 1)):
            tokens, token_logprobs, top = [], [], []
            if body.get("echo"):
                logprobs = self._logprobs(ids)
                for t, token_id in enumerate(ids):
                    tokens.append(self._token(token_id, as_ids))
                    if t == 0:
                        token_logprobs.append(None)
                        top.append(None)
                        continue
                    row = logprobs[t - 1]
                    token_logprobs.append(row[token_id].item())
                    values, top_ids = row.topk(k)
                    entries = {self._token(int(i), as_ids): v.item() for v, i in zip(values, top_ids)}
                    entries[self._token(token_id, as_ids)] = row[token_id].item()  # vLLM adds the chosen token
                    top.append(entries)
            generated = self._generate(ids, max_tokens, body.get("temperature", 1.0), generator) if max_tokens else []
            for token_id, row in generated:
                tokens.append(self._token(token_id, as_ids))
                token_logprobs.append(row[token_id].item())
                top.append({self._token(token_id, as_ids): row[token_id].item()})
            gen_text = self.tokenizer.decode([t for t, _ in generated], skip_special_tokens=True)
            text = (self.tokenizer.decode(ids) if body.get("echo") else "") + gen_text
            offsets, pos = [], 0
            for token in tokens:
                offsets.append(pos)
                pos += len(token)
            choices.append(
                {
                    "index": index,
                    "text": text,
                    "finish_reason": "stop"
                    if generated and generated[-1][0] == self.tokenizer.eos_token_id
                    else "length",
                    "logprobs": {
                        "tokens": tokens,
                        "token_logprobs": token_logprobs,
                        "top_logprobs": top,
                        "text_offset": offsets,
                    }
                    if k is not None
                    else None,
                }
            )
        return {
            "id": "cmpl-test",
            "object": "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
        }

    def chat(self, body):
        ids = self.tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer(ids, add_special_tokens=False)["input_ids"]
        generator = torch.Generator().manual_seed(body.get("seed") or 0)
        k = body.get("top_logprobs") or 0
        choices = []
        for index in range(body.get("n", 1)):
            generated = self._generate(ids, body.get("max_tokens", 16), body.get("temperature", 1.0), generator)
            content = []
            for token_id, row in generated:
                values, top_ids = row.topk(k) if k else ([], [])
                content.append(
                    {
                        "token": self._token(token_id, False),
                        "logprob": row[token_id].item(),
                        "bytes": None,
                        "top_logprobs": [
                            {"token": self._token(int(i), False), "logprob": v.item(), "bytes": None}
                            for v, i in zip(values, top_ids)
                        ],
                    }
                )
            choices.append(
                {
                    "index": index,
                    "message": {
                        "role": "assistant",
                        "content": self.tokenizer.decode([t for t, _ in generated], skip_special_tokens=True),
                    },
                    "finish_reason": "stop",
                    "logprobs": {"content": content} if body.get("logprobs") else None,
                }
            )
        return {
            "id": "chat-test",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
        }


# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_and_tok():
    return tiny_teacher()


def ban_leading_whitespace_tokens(model, tok):
    """Give newline/tab-initial tokens a -1e4 bias, so sampled chat answers never start with one
    (the chat template's "assistant\\n" would merge with it and the prompt stop being a token prefix)."""
    old = model.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        new.weight.copy_(old.weight)
        new.bias.zero_()
        for token, i in tok.get_vocab().items():
            if token[:1] in ("Ċ", "ĉ", "č"):
                new.bias[i] = -1e4
    model.lm_head = new
    return model


def server_teacher(server, **kwargs):
    kwargs.setdefault("backoff", 0.01)
    return OpenAIServerTeacher(server.base_url, "tiny-teacher", **kwargs)


def local(ds, teacher, tok, top_k):
    return annotate(ds, teacher, tokenizer=tok, completion_column="completion", top_k=top_k, progress=False)


def assert_same(a, b, top_k):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["prompt"] == y["prompt"] and x["completion"] == y["completion"]
        torch.testing.assert_close(
            torch.tensor(x["teacher_logprobs"]), torch.tensor(y["teacher_logprobs"]), atol=1e-5, rtol=0
        )
        if top_k:
            assert x["teacher_topk_ids"] == y["teacher_topk_ids"]
            torch.testing.assert_close(
                torch.tensor(x["teacher_topk_logprobs"]), torch.tensor(y["teacher_topk_logprobs"]), atol=1e-5, rtol=0
            )


@pytest.mark.parametrize(
    "token_format, as_ids, top_k",
    [("decoded", False, 0), ("vocab", False, 4), ("decoded", True, 4)],
    ids=["decoded-strings", "vocab-strings-topk", "token-ids-topk"],
)
def test_server_scoring_equals_local_scoring(teacher_and_tok, token_format, as_ids, top_k):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS)
    expected = local(ds, teacher, tok, top_k)
    with FakeOpenAIServer(teacher, tok, token_format=token_format) as server:
        got, report = annotate(
            ds,
            server_teacher(server, return_tokens_as_token_ids=as_ids),
            tokenizer=tok,
            completion_column="completion",
            top_k=top_k,
            return_report=True,
            progress=False,
        )
        assert server.count() == len(ROWS) and report.requests == len(ROWS)
        body = server.requests[0][1]
        assert body["echo"] is True and body["max_tokens"] == 0 and body["logprobs"] == max(top_k, 1)
    assert_same(got, expected, top_k)


def test_string_prompts_sent_as_token_ids(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS).from_list(ROWS)
    expected = local(ds, teacher, tok, 3)
    with FakeOpenAIServer(teacher, tok) as server:
        got = annotate(
            ds,
            server_teacher(server, send_token_ids=True, return_tokens_as_token_ids=True),
            tokenizer=tok,
            completion_column="completion",
            top_k=3,
            progress=False,
        )
        assert isinstance(server.requests[0][1]["prompt"], list)
    assert_same(got, expected, 3)


def test_flaky_server_is_retried_and_nothing_is_lost_or_duplicated(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS)
    expected = local(ds, teacher, tok, 0)

    def flaky(n, path, body):  # every third request fails with 500; requests 2 and 7 hang past the timeout
        return "slow" if n in (2, 7) else "500" if n % 3 == 0 else "ok"

    with FakeOpenAIServer(teacher, tok, behaviour=flaky, slow_s=1.5) as server:
        remote = server_teacher(server, max_concurrency=4, max_retries=8, timeout=0.5)
        got, report = annotate(
            ds, remote, tokenizer=tok, completion_column="completion", return_report=True, progress=False
        )
        assert server.count(action="500") >= 2 and server.count(action="slow") == 2
        assert server.count(action="ok") == len(ROWS)
        assert remote.requests_sent == len(server.requests) > len(ROWS)
    assert report.failures == [] and report.rows_out == len(ROWS)
    assert_same(got, expected, 0)


def test_failures_give_up_with_reasons(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS[:4])

    def poison(n, path, body):  # the row with add(2, 3) always fails; an HTTP 400 is not retried
        if "add(2, 3)" in str(body["prompt"]):
            return "500"
        return "400" if "add(3, 4)" in str(body["prompt"]) else "ok"

    with FakeOpenAIServer(teacher, tok, behaviour=poison) as server:
        got, report = annotate(
            ds,
            server_teacher(server, max_retries=2),
            tokenizer=tok,
            completion_column="completion",
            on_error="skip",
            return_report=True,
            progress=False,
        )
        assert server.count(action="500") == 3 and server.count(action="400") == 1
        assert [f["row"] for f in report.failures] == [2, 3]
        assert "gave up after 3 attempts" in report.failures[0]["reason"] and "500" in report.failures[0]["reason"]
        assert "BadRequestError" in report.failures[1]["reason"]
        assert len(got) == 2 and got["prompt"] == ds.select([0, 1])["prompt"]
        with pytest.raises(AnnotationError, match=r"row 2: .*gave up after 1 attempts"):
            annotate(
                ds,
                server_teacher(server, max_retries=0, max_concurrency=1),
                tokenizer=tok,
                completion_column="completion",
                progress=False,
            )


def test_resume_after_crash_does_not_rerequest_cached_rows(tmp_path, teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS)
    expected = local(ds, teacher, tok, 2)
    kwargs = dict(tokenizer=tok, completion_column="completion", top_k=2, cache_dir=tmp_path, progress=False)

    # "crash": after 3 answers the server refuses everything, which aborts the run
    with FakeOpenAIServer(
        teacher, tok, behaviour=lambda n, p, b: "ok" if n <= 3 else "400", token_format="vocab"
    ) as server:
        with pytest.raises(AnnotationError):
            annotate(ds, server_teacher(server, max_concurrency=2), **kwargs)
    cached = (tmp_path / "annotations.jsonl").read_text().splitlines()
    assert 1 <= len(cached) <= 3

    with FakeOpenAIServer(teacher, tok, token_format="vocab") as server:
        got, report = annotate(ds, server_teacher(server), return_report=True, **kwargs)
        assert server.count() == len(ROWS) - len(cached)  # cached rows were not requested again
        asked = {json.dumps(body["prompt"]) for _, body, _ in server.requests}
        assert len(asked) == len(server.requests)  # and nothing was asked twice
    assert report.rows_cached == len(cached) and report.requests == len(ROWS) - len(cached)
    assert_same(got, expected, 2)
    keys = [json.loads(line)["key"] for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(ROWS)

    with FakeOpenAIServer(teacher, tok, token_format="vocab") as server:
        again = annotate(ds, server_teacher(server), **kwargs)
        assert server.requests == []
    assert_same(again, expected, 2)


def test_chat_sampling_through_server(teacher_and_tok):
    base, tok = teacher_and_tok
    teacher, _ = tiny_causal_lm(seed=1, tokenizer=tok)
    teacher.load_state_dict(base.state_dict())
    ban_leading_whitespace_tokens(teacher, tok)
    ds = load_supervised_dataset(ROWS[:3]).select_columns(["prompt"])
    with FakeOpenAIServer(teacher, tok, token_format="vocab") as server:
        remote = server_teacher(server)
        greedy = annotate(ds, remote, tokenizer=tok, max_new_tokens=8, temperature=0, top_k=2, progress=False)
        chat_bodies = [b for p, b, _ in server.requests if p.endswith("/chat/completions")]
        assert len(chat_bodies) == 3 and all(b["logprobs"] is True and b["max_tokens"] == 8 for b in chat_bodies)
        sampled = annotate(
            ds, remote, tokenizer=tok, num_samples=2, max_new_tokens=8, temperature=1.0, seed=0, progress=False
        )
    local_greedy = annotate(ds, teacher, tokenizer=tok, max_new_tokens=8, temperature=0, top_k=2, progress=False)
    # same greedy texts and same per-token log-probs from the server's chat logprobs as from local generation
    assert greedy["completion"] == local_greedy["completion"]
    for a, b in zip(greedy["teacher_sample_logprobs"], local_greedy["teacher_sample_logprobs"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    assert_same(greedy, local_greedy, 2)
    assert len(sampled) == 6 and sampled["teacher_sample_index"] == [0, 1] * 3
    for row in sampled:  # teacher-forced values line up with the student's completion tokens
        prompt_ids, completion_ids = completion_token_ids(tok, row["prompt"], row["completion"])
        assert len(row["teacher_logprobs"]) == len(completion_ids)
        with torch.no_grad():
            lp = torch.log_softmax(
                teacher(torch.tensor([prompt_ids + completion_ids])).logits[0, len(prompt_ids) - 1 : -1], -1
            )
        torch.testing.assert_close(
            torch.tensor(row["teacher_logprobs"]),
            lp.gather(1, torch.tensor(completion_ids)[:, None])[:, 0],
            atol=1e-5,
            rtol=0,
        )


def test_server_with_another_tokenizer_is_refused(teacher_and_tok):
    teacher, tok = teacher_and_tok
    other_tok = tiny_tokenizer(vocab_size=300)
    other_model, _ = tiny_causal_lm(seed=2, tokenizer=other_tok)
    ds = load_supervised_dataset(ROWS[:2])
    with FakeOpenAIServer(other_model, other_tok) as server:
        with pytest.raises(
            AnnotationError,
            match=r"^row [01]: AlignmentError: .*(server token|server returned).*shares? the student's tokenizer",
        ):
            annotate(ds, server_teacher(server), tokenizer=tok, completion_column="completion", progress=False)
    with pytest.raises(AlignmentError):
        raise AlignmentError("importable")


def test_string_prompt_sampling_through_completions_api(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS[:2]).from_list([{"prompt": r["prompt"]} for r in ROWS[:2]])
    with FakeOpenAIServer(teacher, tok, token_format="vocab") as server:
        remote = annotate(
            ds,
            server_teacher(server, send_token_ids=True),
            tokenizer=tok,
            max_new_tokens=6,
            temperature=0,
            progress=False,
        )
        sampling = [b for _, b, _ in server.requests if not b.get("echo")]
        assert len(sampling) == 2 and all(b["logprobs"] == 1 and b["max_tokens"] == 6 for b in sampling)
    here = annotate(ds, teacher, tokenizer=tok, max_new_tokens=6, temperature=0, progress=False)
    assert remote["completion"] == here["completion"] and all(isinstance(c, str) for c in remote["completion"])
    for a, b in zip(remote["teacher_sample_logprobs"], here["teacher_sample_logprobs"]):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=1e-4, rtol=0)
    assert_same(remote, here, 0)
