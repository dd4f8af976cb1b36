"""The local vLLM-shaped teacher server: response shapes, refusals and injected faults, over real HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
import torch
from served_fixtures import teacher_server  # noqa: F401

from fastdistill.testing import save_tiny_causal_lm, tiny_causal_lm
from fastdistill.testing.teacher_server import Faults, TeacherServerProcess


@pytest.fixture(scope="module")
def model_and_tok():
    return tiny_causal_lm(seed=3)


def post(url, body, timeout=30):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def reference(model, ids):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_prompt_logprobs_in_vllm_shape(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    server = teacher_server(model, tok, max_logprobs=5)
    ids = tok("def test_add():\n    assert add(1, 2) == 3", add_special_tokens=False)["input_ids"]
    status, raw = post(f"{server.base_url}/completions",
                       {"model": "teacher", "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 3})
    assert status == 200
    choice = json.loads(raw)["choices"][0]
    entries = choice["prompt_logprobs"]
    assert len(entries) == len(ids) and entries[0] is None
    lp = reference(model, ids)
    for t in range(1, len(ids)):
        entry = entries[t]
        assert str(ids[t]) in entry  # the prompt's own token is always listed
        assert abs(entry[str(ids[t])]["logprob"] - lp[t - 1, ids[t]].item()) < 1e-5
        top = sorted((v["rank"], int(k)) for k, v in entry.items() if v["rank"] <= 3)
        assert [r for r, _ in top] == [1, 2, 3]
        assert [i for _, i in top] == lp[t - 1].topk(3).indices.tolist()
        assert all(set(v) == {"logprob", "rank", "decoded_token"} for v in entry.values())
    assert choice["logprobs"] is None and isinstance(choice["text"], str)


def test_echo_logprobs_shape_with_token_ids(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    server = teacher_server(model, tok)
    status, raw = post(f"{server.base_url}/completions", {"model": "teacher", "prompt": "x = [1, 2, 3]", "echo": True,
                                                          "logprobs": 2, "max_tokens": 1, "temperature": 0,
                                                          "return_tokens_as_token_ids": True})
    assert status == 200
    logprobs = json.loads(raw)["choices"][0]["logprobs"]
    ids = tok("x = [1, 2, 3]", add_special_tokens=False)["input_ids"]
    assert logprobs["tokens"][: len(ids)] == [f"token_id:{i}" for i in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert len(logprobs["tokens"]) == len(ids) + 1  # plus the generated token
    lp = reference(model, ids)
    assert abs(logprobs["token_logprobs"][1] - lp[0, ids[1]].item()) < 1e-5


def test_refusals_and_models(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    server = teacher_server(model, tok, max_logprobs=4)
    status, raw = post(f"{server.base_url}/completions", {"model": "teacher", "prompt": [1, 2, 3], "max_tokens": 1,
                                                          "prompt_logprobs": 5})
    assert status == 400 and "greater than max allowed: 4" in json.loads(raw)["error"]["message"]
    status, raw = post(f"{server.base_url}/completions", {"model": "other", "prompt": [1, 2], "max_tokens": 1})
    assert status == 400 and "does not exist" in json.loads(raw)["error"]["message"]
    with urllib.request.urlopen(f"{server.base_url}/models") as response:
        assert [m["id"] for m in json.loads(response.read())["data"]] == ["teacher"]
    status, raw = post(server.base_url[: -len("/v1")] + "/tokenize", {"model": "teacher", "prompt": "x = [1]",
                                                                      "add_special_tokens": False})
    assert json.loads(raw)["tokens"] == tok("x = [1]", add_special_tokens=False)["input_ids"]


def test_injected_faults(model_and_tok, teacher_server):  # noqa: F811
    model, tok = model_and_tok
    faults = Faults(schedule={1: "500", 2: "malformed", 3: "truncated", 4: "timeout"}, hang_s=0.5)
    server = teacher_server(model, tok, faults=faults)
    body = {"model": "teacher", "prompt": [5, 6, 7, 8], "max_tokens": 1, "prompt_logprobs": 3}
    url = f"{server.base_url}/completions"
    assert post(url, body)[0] == 500
    status, raw = post(url, body)
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    status, raw = post(url, body)
    entry = json.loads(raw)["choices"][0]["prompt_logprobs"][1]
    assert sum(v["rank"] <= 3 for v in entry.values()) < 3  # fewer than k top entries
    with pytest.raises(OSError):  # hangs past the client's timeout
        post(url, body, timeout=0.2)
    assert post(url, body)[0] == 200
    assert [a for _, _, a in server.log] == ["500", "malformed", "truncated", "timeout", "ok"]


def test_rates_are_seeded():
    a, b = Faults(rates={"500": 0.3}, seed=1), Faults(rates={"500": 0.3}, seed=1)
    draws = [a.draw(n, "/v1/completions") for n in range(1, 101)]
    assert draws == [b.draw(n, "/v1/completions") for n in range(1, 101)]
    assert 15 < draws.count("500") < 45
    assert Faults(rates={"500": 1.0}).draw(1, "/v1/models") == "ok"  # probes stay healthy
    with pytest.raises(ValueError, match="unknown fault"):
        Faults(rates={"explode": 0.1})


def test_separate_process(tmp_path):
    directory = save_tiny_causal_lm(tmp_path / "teacher", seed=4, hidden_size=32, intermediate_size=64)
    with TeacherServerProcess(directory, model_name="proc-teacher", max_logprobs=3) as server:
        with urllib.request.urlopen(f"{server.base_url}/models") as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["proc-teacher"]
        status, raw = post(f"{server.base_url}/completions", {"model": "proc-teacher", "prompt": [5, 6, 7],
                                                              "max_tokens": 1, "prompt_logprobs": 3})
        assert status == 200 and len(json.loads(raw)["choices"][0]["prompt_logprobs"]) == 3
        pid = server.proc.pid
    assert server.proc.poll() is not None, f"server process {pid} still running"
