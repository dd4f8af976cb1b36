"""The served teacher's client against the local vLLM-shaped server: requests, fallbacks, refusals, faults."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from served_fixtures import teacher_server  # noqa: F401

from fastdistill.teacher import (
    AlignmentError,
    OpenAIServerTeacher,
    ServedTeacher,
    TeacherFailureError,
    TeacherServerError,
    TokenizerMismatchError,
    annotate,
)
from fastdistill.testing import tiny_causal_lm, tiny_tokenizer
from fastdistill.testing.teacher_server import Faults, TeacherServer


@pytest.fixture(scope="module")
def model_and_tok():
    model, tok = tiny_causal_lm(seed=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    return model, tok


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def local_scores(model, prompt_ids, completion_ids, k):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt_ids + completion_ids])).logits[0].float(), -1)
    lp = lp[len(prompt_ids) - 1 : -1]
    values, top = lp.topk(k, dim=-1)
    return lp.gather(1, torch.tensor(completion_ids)[:, None])[:, 0], top, values


def client(server, **kwargs):
    kwargs.setdefault("backoff", 0.01)
    return OpenAIServerTeacher(server.base_url, "teacher", **kwargs)


def test_prompt_logprobs_request_scores_exact_tokens(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    server = teacher_server(model, tok, max_logprobs=6)
    remote = client(server)
    remote.tokenizer = tok
    p, c = ids(tok, "x = "), ids(tok, "[1, 2, 3]")
    got = remote.score_tokens(p, c, 6)
    chosen, top, values = local_scores(model, p, c, 6)
    torch.testing.assert_close(torch.tensor(got["teacher_logprobs"]), chosen, atol=1e-5, rtol=0)
    assert got["teacher_topk_ids"] == top.tolist()
    torch.testing.assert_close(torch.tensor(got["teacher_topk_logprobs"]), values, atol=1e-5, rtol=0)
    _, body, _ = server.log[-1]
    assert body["prompt"] == p + c and body["max_tokens"] == 1 and body["prompt_logprobs"] == 6
    assert "echo" not in body and "return_tokens_as_token_ids" not in body


class NoPromptLogprobsServer(TeacherServer):
    """A server that ignores vLLM's prompt_logprobs (as non-vLLM OpenAI-compatible servers do)."""

    def completions(self, body, truncate=False):
        body = {k: v for k, v in body.items() if k != "prompt_logprobs"}
        return super().completions(body, truncate)


def test_echo_fallback_for_servers_without_prompt_logprobs(model_and_tok):
    model, tok = model_and_tok
    with NoPromptLogprobsServer(model, tok, model_name="teacher") as server:
        remote = client(server, return_tokens_as_token_ids=True)
        remote.tokenizer = tok
        p, c = ids(tok, "def f(a):\n"), ids(tok, "    return a + 1")
        got = remote.score_tokens(p, c, 4)
        assert remote._mode == "echo"
        assert server.log[-1][1]["echo"] is True and server.log[-1][1]["prompt"] == p + c
        chosen, top, _ = local_scores(model, p, c, 4)
        torch.testing.assert_close(torch.tensor(got["teacher_logprobs"]), chosen, atol=1e-5, rtol=0)
        assert got["teacher_topk_ids"] == top.tolist()
        strict = client(server, scoring="prompt_logprobs")
        strict.tokenizer = tok
        with pytest.raises(TeacherServerError, match="does not implement vLLM's prompt_logprobs"):
            strict.score_tokens(p, c, 4)


def test_k_above_max_logprobs_is_refused_by_name(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    server = teacher_server(model, tok, max_logprobs=4)
    remote = client(server)
    remote.tokenizer = tok
    with pytest.raises(TeacherServerError, match=r"refuses prompt_logprobs=5.*--max-logprobs 5"):
        remote.score_tokens(ids(tok, "x = "), ids(tok, "[1]"), 5)
    with pytest.raises(TeacherServerError, match="--max-logprobs"):
        ServedTeacher(server.base_url, tok, top_k=5).connect()


def test_truncated_answers_are_refused(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    server = teacher_server(model, tok, faults=Faults(rates={"truncated": 1.0}))
    remote = client(server)
    remote.tokenizer = tok
    with pytest.raises(Exception, match=r"fewer than teacher_top_k=3.*--max-logprobs"):
        remote.score_tokens(ids(tok, "x = "), ids(tok, "[1]"), 3)


def test_text_prompt_with_bpe_merge_at_the_boundary(model_and_tok, teacher_server):  # noqa: F811
    """The server merges " " + "[" into " [": aligned by character offsets, the row is re-scored as the
    student's exact tokens instead of being refused as another tokenizer."""
    model, tok = model_and_tok
    assert ids(tok, "x = [1, 2, 3]")[:3] != ids(tok, "x = ") + ids(tok, "[1, 2, 3]")[:1]  # the merge happens
    server = teacher_server(model, tok)
    rows = [{"prompt": "x = ", "completion": "[1, 2, 3]"}, {"prompt": "y = ", "completion": "(4, 5)"}]
    ds = Dataset.from_list(rows)  # string prompts: the student tokenizes prompt and completion apart
    here = annotate(ds, model, tokenizer=tok, completion_column="completion", top_k=2, progress=False)
    remote = client(server, scoring="echo", return_tokens_as_token_ids=True)
    there = annotate(ds, remote, tokenizer=tok, completion_column="completion", top_k=2, progress=False)
    for a, b in zip(here, there):
        torch.testing.assert_close(torch.tensor(a["teacher_logprobs"]), torch.tensor(b["teacher_logprobs"]),
                                   atol=1e-5, rtol=0)
        assert a["teacher_topk_ids"] == b["teacher_topk_ids"]
    prompts = [body["prompt"] for _, body, _ in server.log]
    assert isinstance(prompts[0], str) and any(isinstance(p, list) for p in prompts)  # text first, then ids


def test_tokenizer_probe_refuses_another_tokenizer(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    other_tok = tiny_tokenizer(vocab_size=300)
    other, _ = tiny_causal_lm(seed=2, tokenizer=other_tok)
    server = teacher_server(other, other_tok)
    with pytest.raises(TokenizerMismatchError, match="does not share the student's tokenizer"):
        ServedTeacher(server.base_url, tok, top_k=2).connect()
    good = teacher_server(model, tok, model_name="a")
    with pytest.raises(TeacherServerError, match="does not serve 'b'"):
        ServedTeacher(good.base_url, tok, model="b").connect()
    assert ServedTeacher(good.base_url, tok, top_k=2).connect().teacher.model == "a"  # the only model served


def test_faulty_rows_are_retried_then_reported(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    # after the start-up probe, every request of the second row fails; the others see 500s / malformed answers
    server = teacher_server(model, tok, faults=Faults(rates={"500": 0.2, "malformed": 0.1, "truncated": 0.1}, seed=3))
    served = ServedTeacher(server.base_url, tok, top_k=3, max_retries=6, max_failed_fraction=0.5)
    served.teacher.backoff = served.backoff = 0.01
    served.connect()
    rows = [(ids(tok, f"a{i} = "), ids(tok, f"[{i}, {i + 1}]")) for i in range(6)]
    results = served.submit(rows).results()
    assert all(isinstance(r, dict) for r in results)
    assert server.count(action="ok") < len(server.log)  # faults happened and were retried
    for (p, c), r in zip(rows, results):
        chosen, _, _ = local_scores(model, p, c, 3)
        torch.testing.assert_close(torch.tensor(r["teacher_logprobs"]), chosen, atol=1e-5, rtol=0)

    broken = teacher_server(model, tok, faults=Faults(rates={"500": 1.0}, paths=("/v1/completions",)))
    dead = ServedTeacher(broken.base_url, tok, top_k=0, max_retries=1, max_failed_fraction=0.25)
    dead.teacher.backoff = 0.01
    results = dead.submit(rows[:2]).results()
    assert all(isinstance(r, Exception) for r in results)
    with pytest.raises(TeacherFailureError, match=r"127\.0\.0\.1.*failed 2 of 4 rows.*gave up after 2 attempts"):
        dead.account(results, rows_in_step=4, failed_in_step=2)
    dead.account(results[:1], rows_in_step=8, failed_in_step=1)  # 1 of 8 is below the fraction
    assert dead.rows_failed == 3


def fake_sampling_client(tokens, finish_reason, stop_reason=None):
    """An OpenAI client double whose completions name generated tokens by string (a non-vLLM server)."""
    from types import SimpleNamespace

    choice = SimpleNamespace(logprobs=SimpleNamespace(tokens=tokens), finish_reason=finish_reason,
                             model_extra={"stop_reason": stop_reason})
    create = lambda **kwargs: SimpleNamespace(choices=[choice])  # noqa: E731
    return SimpleNamespace(completions=SimpleNamespace(create=create))


def test_generate_tokens_reads_ids_and_keeps_the_stop_token():
    tok = tiny_tokenizer()
    teacher = OpenAIServerTeacher("http://127.0.0.1:9/v1", "t")
    teacher.tokenizer = tok
    words = ids(tok, "x = 1")
    as_strings = [tok.convert_ids_to_tokens(i) for i in words]
    eos = tok.eos_token_id
    teacher._client = fake_sampling_client(as_strings, "stop")  # stopped on EOS, which vLLM leaves out
    assert teacher.generate_tokens([5, 6], 8, 1.0) == words + [eos]
    teacher._client = fake_sampling_client(as_strings, "stop", stop_reason="\n")  # a stop string: nothing added
    assert teacher.generate_tokens([5, 6], 8, 1.0) == words
    teacher._client = fake_sampling_client(as_strings, "length")
    assert teacher.generate_tokens([5, 6], len(words), 1.0) == words
    teacher._client = fake_sampling_client([f"token_id:{i}" for i in words], "length")
    assert teacher.generate_tokens([5, 6], len(words), 1.0) == words
    teacher._client = fake_sampling_client([], "length")
    with pytest.raises(AlignmentError, match="generated 0 tokens"):
        teacher.generate_tokens([5, 6], 4, 1.0)
