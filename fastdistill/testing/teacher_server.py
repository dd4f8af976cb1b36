"""A local, vLLM-shaped teacher server around a (tiny) causal LM, with fault injection.

For tests, demos and small local runs of the served-teacher path (``GKDTrainer(teacher_model=
"http://127.0.0.1:PORT/v1")``): the server answers in the response shapes of vLLM's
OpenAI-compatible server, so the client code that talks to it is the code that talks to vLLM:

* ``POST /v1/completions`` with a text or token-id prompt, ``max_tokens``, ``temperature``,
  ``seed``, ``n``, ``logprobs`` (+ ``echo``; ``return_tokens_as_token_ids`` makes tokens read
  ``"token_id:<id>"``) and vLLM's ``prompt_logprobs``: each choice then carries
  ``prompt_logprobs = [None, {"<id>": {"logprob", "rank", "decoded_token"}, ...}, ...]`` (the
  prompt's own token plus the top ``k``, ranks 1-based). ``logprobs``/``prompt_logprobs`` above
  ``max_logprobs`` are refused with HTTP 400, as ``vllm serve --max-logprobs`` does.
* ``GET /v1/models`` and ``POST /tokenize`` (vLLM's, at the root: ``{"tokens": [...]}``).

Faults are injected per request by :class:`Faults` (seeded, so runs repeat): HTTP 500, a hang past
the client's timeout, malformed JSON, truncated log-probs (fewer than ``k`` entries), plus a fixed
``latency_s`` on every request (slept outside the model lock, so concurrent requests overlap their
latency as on a batching server).

In-process (a thread)::

    with TeacherServer(model, tokenizer, latency_s=0.05) as server:
        teacher = server.base_url          # "http://127.0.0.1:PORT/v1"

As a separate process (its memory is not the trainer's)::

    with TeacherServerProcess(model_dir, latency_s=0.05) as server: ...
    # or: python -m fastdistill.testing.teacher_server --model-dir DIR --port 8000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)

__all__ = ["Faults", "JsonRequestHandler", "TeacherServer", "TeacherServerProcess", "sample_tokens"]

FAULT_KINDS = ("500", "timeout", "malformed", "truncated")


@dataclass
class Faults:
    """Which requests fail, and how.

    Args:
        rates: probability per request of each fault kind (``"500"``, ``"timeout"``, ``"malformed"``,
            ``"truncated"``); drawn from a generator seeded with ``seed``.
        schedule: ``{request number (1-based): kind}``, applied before ``rates``.
        hang_s: how long a ``"timeout"`` request sleeps before answering (set it above the client's timeout).
        paths: the paths faults apply to (``/v1/completions`` by default; the probes stay healthy).
        rule: ``rule(n, path, body) -> kind | None``, consulted first (e.g. to poison one row's requests).
    """

    rates: dict[str, float] = field(default_factory=dict)
    schedule: dict[int, str] = field(default_factory=dict)
    seed: int = 0
    hang_s: float = 5.0
    paths: tuple[str, ...] = ("/v1/completions",)
    rule: Callable | None = None

    def __post_init__(self):
        for kind in list(self.rates) + list(self.schedule.values()):
            if kind not in FAULT_KINDS and kind not in ("ok", "400"):
                raise ValueError(f"unknown fault kind {kind!r}; use one of {FAULT_KINDS}")
        self._rng = random.Random(self.seed)

    def draw(self, n: int, path: str, body: dict | None = None) -> str:
        if path not in self.paths:
            return "ok"
        if self.rule is not None:
            kind = self.rule(n, path, body or {})
            if kind is not None:
                return kind
        if n in self.schedule:
            return self.schedule[n]
        u = self._rng.random()
        for kind, rate in self.rates.items():
            if u < rate:
                return kind
            u -= rate
        return "ok"


class JsonRequestHandler(BaseHTTPRequestHandler):
    """A quiet request handler that answers JSON: the base of this module's server and of test doubles."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status, payload):
        self._send_raw(status, json.dumps(payload).encode())

    def _send_raw(self, status, data: bytes):
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


def sample_tokens(logprobs_of: Callable, ids: list[int], max_tokens: int, *, temperature: float, generator,
                  eos_token_id: int | None, first_row=None) -> list[tuple[int, object]]:
    """Generate up to ``max_tokens`` tokens after ``ids`` as the server does: ``[(token, log-probs row), ...]``.

    ``logprobs_of(ids)`` returns one row of log-probabilities per position (e.g. the model's
    ``log_softmax``); each step draws from the last row: its argmax when ``temperature`` is 0, else
    one ``torch.multinomial`` draw from ``softmax(row / temperature)`` with ``generator``. Generation
    stops after ``eos_token_id``. ``first_row`` (the prompt's last row, when a forward over the
    prompt was already made) saves the first step's forward. Test servers that answer in other API
    shapes call this too, so every fake server samples the same tokens from the same model and seed.
    """
    import torch

    generated = []  # (token, log-probs row it was drawn from)
    context = list(ids)
    for _ in range(max_tokens):
        row = first_row if first_row is not None and len(context) == len(ids) else logprobs_of(context)[-1]
        if temperature == 0:
            token = int(row.argmax())
        else:
            token = int(torch.multinomial(torch.softmax(row / temperature, -1), 1, generator=generator))
        generated.append((token, row))
        context.append(token)
        if token == eos_token_id:
            break
    return generated


class _BadRequest(Exception):
    pass


class TeacherServer:
    """An OpenAI/vLLM-compatible completions server around ``model`` on 127.0.0.1.

    Args:
        model: a causal LM (evaluated with ``torch.no_grad`` under a lock).
        tokenizer: its tokenizer (text prompts, decoded tokens, ``/tokenize``).
        model_name: the name ``/v1/models`` lists (requests for another name get HTTP 404, as vLLM).
        max_logprobs: the largest ``logprobs`` / ``prompt_logprobs`` accepted (vLLM's ``--max-logprobs``).
        latency_s: extra seconds added to every completions request.
        faults: a :class:`Faults` (default: none).
        port: 0 picks a free port.
    """

    def __init__(self, model, tokenizer, *, model_name: str = "teacher", max_logprobs: int = 20,
                 latency_s: float = 0.0, faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.max_logprobs = max_logprobs
        self.latency_s = latency_s
        self.faults = faults or Faults()
        self.lock = threading.Lock()
        self.model_lock = threading.Lock()
        self.log: list[tuple[str, dict, str]] = []  # (path, body, what happened), in arrival order
        server = self

        class Handler(JsonRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": [
                        {"id": server.model_name, "object": "model", "owned_by": "fastdistill",
                         "max_model_len": int(getattr(server.model.config, "max_position_embeddings", 2048))}]})
                if self.path.rstrip("/") == "/health":
                    return self._send(200, {})
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError", "code": 404}})

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    return self._send(400, {"error": {"message": "invalid JSON body", "type": "BadRequestError",
                                                      "code": 400}})
                path = self.path.rstrip("/")
                with server.lock:
                    n = len(server.log) + 1
                    action = server.faults.draw(n, path, body)
                    server.log.append((path, body, action))
                if path == "/v1/completions" and server.latency_s:
                    time.sleep(server.latency_s)
                if action == "timeout":
                    time.sleep(server.faults.hang_s)
                if action in ("500", "400"):
                    return self._send(int(action), {"error": {"message": f"injected HTTP {action}",
                                                              "type": "InternalServerError", "code": int(action)}})
                try:
                    if path == "/v1/completions":
                        payload = server.completions(body, truncate=action == "truncated")
                    elif path in ("/tokenize", "/v1/tokenize"):
                        payload = server.tokenize(body)
                    else:
                        return self._send(404, {"error": {"message": f"no route {self.path}", "type": "NotFoundError",
                                                          "code": 404}})
                except _BadRequest as err:
                    return self._send(400, {"error": {"message": str(err), "type": "BadRequestError", "code": 400}})
                except Exception as err:
                    logger.exception("teacher server failed on a request")
                    return self._send(500, {"error": {"message": f"{type(err).__name__}: {err}",
                                                      "type": "InternalServerError", "code": 500}})
                if action == "malformed":
                    return self._send_raw(200, json.dumps(payload)[: 40].encode() + b'{"choices": [')
                self._send(200, payload)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread: threading.Thread | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what clients (and ``teacher_model=``) take."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> TeacherServer:
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="teacher-server")
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def count(self, path: str = "/v1/completions", action: str | None = None) -> int:
        """Requests received on ``path`` (with that fault ``action``, e.g. ``"ok"``, ``"500"``)."""
        with self.lock:
            return sum(1 for p, _, a in self.log if p == path and (action is None or a == action))

    # ---- model -------------------------------------------------------------------------------
    def _ids(self, prompt) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            if max(prompt) >= len(self.tokenizer) or min(prompt) < 0:
                raise _BadRequest(f"token id out of range [0, {len(self.tokenizer)})")
            return list(prompt)
        raise _BadRequest("prompt must be a non-empty string or list of token ids")

    def _logprobs(self, ids):
        import torch

        with self.model_lock, torch.no_grad():
            logits = self.model(torch.tensor([ids], device=self.model.device)).logits[0].float()
        return torch.log_softmax(logits, -1).cpu()

    def _decoded(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _token(self, token_id: int, as_ids: bool) -> str:
        return f"token_id:{token_id}" if as_ids else self._decoded(token_id)

    def _check_k(self, name: str, k) -> int | None:
        if k is None:
            return None
        if isinstance(k, bool) or not isinstance(k, int) or k < -1:
            raise _BadRequest(f"{name} must be a non-negative integer")
        if k > self.max_logprobs:
            kind = "prompt" if name == "prompt_logprobs" else "sample"
            raise _BadRequest(
                f"Requested {kind} logprobs of {k}, which is greater than max allowed: {self.max_logprobs}")
        return k

    def completions(self, body: dict, truncate: bool = False) -> dict:
        import torch

        if body.get("model") != self.model_name:
            raise _BadRequest(f"The model `{body.get('model')}` does not exist.")
        ids = self._ids(body.get("prompt"))
        k = self._check_k("logprobs", body.get("logprobs"))
        pk = self._check_k("prompt_logprobs", body.get("prompt_logprobs"))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        max_tokens = body.get("max_tokens", 16)
        temperature = body.get("temperature", 1.0)
        echo = bool(body.get("echo"))
        if max_tokens is None or max_tokens < (0 if echo else 1):
            raise _BadRequest("max_tokens must be at least 1 (0 only with echo)")
        need_prompt = echo and k is not None or pk is not None
        prompt_lp = self._logprobs(ids) if need_prompt else None
        generator = torch.Generator().manual_seed(int(body.get("seed") or 0))
        choices = []
        completion_tokens = 0
        for index in range(int(body.get("n", 1))):
            # the prompt's forward already holds the first generated token's distribution
            generated = sample_tokens(self._logprobs, ids, max_tokens, temperature=temperature, generator=generator,
                                      eos_token_id=self.tokenizer.eos_token_id,
                                      first_row=prompt_lp[-1] if prompt_lp is not None else None)
            completion_tokens += len(generated)
            choice = {
                "index": index,
                "text": (self.tokenizer.decode(ids) if echo else "") + self.tokenizer.decode([t for t, _ in generated]),
                "logprobs": None,
                "finish_reason": "stop" if generated and generated[-1][0] == self.tokenizer.eos_token_id else "length",
                "stop_reason": None,
            }
            if k is not None:
                tokens, token_logprobs, top = [], [], []
                if echo:
                    for t, token_id in enumerate(ids):
                        tokens.append(self._token(token_id, as_ids))
                        if t == 0:
                            token_logprobs.append(None)
                            top.append(None)
                            continue
                        row = prompt_lp[t - 1]
                        token_logprobs.append(row[token_id].item())
                        top.append(self._top_entries(row, token_id, k, as_ids, truncate))
                for token_id, row in generated:
                    tokens.append(self._token(token_id, as_ids))
                    token_logprobs.append(row[token_id].item())
                    top.append(self._top_entries(row, token_id, k, as_ids, truncate))
                offsets, pos = [], 0
                for token in (self._decoded(i) for i in (list(ids) if echo else []) + [t for t, _ in generated]):
                    offsets.append(pos)
                    pos += len(token)
                choice["logprobs"] = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top,
                                      "text_offset": offsets}
            if pk is not None:
                entries = [None]
                for t in range(1, len(ids)):
                    entries.append(self._prompt_entry(prompt_lp[t - 1], ids[t], pk, truncate))
                choice["prompt_logprobs"] = entries
            choices.append(choice)
        return {
            "id": f"cmpl-{time.monotonic_ns()}", "object": "text_completion", "created": int(time.time()),
            "model": self.model_name, "choices": choices,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion_tokens,
                      "total_tokens": len(ids) + completion_tokens},
        }

    def _top_entries(self, row, token_id: int, k: int, as_ids: bool, truncate: bool) -> dict:
        k_eff = max(k - 1, 0) if truncate else k
        values, top_ids = row.topk(k_eff) if k_eff else ([], [])
        entries = {self._token(int(i), as_ids): float(v) for v, i in zip(values, top_ids)}
        entries.setdefault(self._token(token_id, as_ids), float(row[token_id]))  # vLLM adds the chosen token
        return entries

    def _prompt_entry(self, row, token_id: int, k: int, truncate: bool) -> dict:
        import torch

        k_eff = max(k - 1, 0) if truncate else k
        ranks = torch.argsort(row, descending=True)
        entry = {}
        rank_of = int((row > row[token_id]).sum()) + 1
        entry[str(token_id)] = {"logprob": float(row[token_id]), "rank": rank_of,
                                "decoded_token": self._decoded(token_id)}
        for r, i in enumerate(ranks[:k_eff].tolist(), start=1):
            entry.setdefault(str(i), {"logprob": float(row[i]), "rank": r, "decoded_token": self._decoded(i)})
        return entry

    def tokenize(self, body: dict) -> dict:
        if "prompt" in body:
            ids = self.tokenizer(body["prompt"],
                                 add_special_tokens=bool(body.get("add_special_tokens", True)))["input_ids"]
        elif "messages" in body:
            text = self.tokenizer.apply_chat_template(
                body["messages"], tokenize=False, add_generation_prompt=bool(body.get("add_generation_prompt", True)))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            raise _BadRequest("tokenize needs a prompt or messages")
        out = {"count": len(ids), "max_model_len": int(getattr(self.model.config, "max_position_embeddings", 2048)),
               "tokens": ids}
        if body.get("return_token_strs"):
            out["token_strs"] = self.tokenizer.convert_ids_to_tokens(ids)
        return out


class TeacherServerProcess:
    """:class:`TeacherServer` in a separate Python process (``python -m fastdistill.testing.teacher_server``).

    ``model_dir`` is a directory ``from_pretrained`` loads (e.g. from
    :func:`fastdistill.testing.save_tiny_causal_lm`). The keyword arguments mirror the command line;
    ``fault_rates`` is ``{"500": 0.1, ...}``. The process is stopped (terminated, then killed) on exit.
    """

    def __init__(self, model_dir: str, *, model_name: str = "teacher", max_logprobs: int = 20, latency_s: float = 0.0,
                 fault_rates: dict[str, float] | None = None, hang_s: float = 5.0, seed: int = 0,
                 threads: int | None = None, env: dict | None = None, startup_timeout_s: float = 120.0):
        self.cmd = [sys.executable, "-m", "fastdistill.testing.teacher_server", "--model-dir", str(model_dir),
                    "--model-name", model_name, "--max-logprobs", str(max_logprobs), "--latency-s", str(latency_s),
                    "--faults", json.dumps(fault_rates or {}), "--hang-s", str(hang_s), "--seed", str(seed),
                    "--port", "0"]
        if threads:
            self.cmd += ["--threads", str(threads)]
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None

    def start(self) -> TeacherServerProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, env=self.env, text=True)
        deadline = time.monotonic() + self.startup_timeout_s
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(max(deadline - time.monotonic(), 0))
        line = box[0] if box else ""
        if not line.startswith("READY "):
            self.stop()
            raise RuntimeError(f"the teacher server process did not start (printed {line!r}); "
                               f"command: {' '.join(self.cmd)}")
        self.base_url = line.split()[1]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Serve a local causal LM in vLLM's completions shapes (tests, demos).")
    parser.add_argument("--model-dir", required=True, help="directory from_pretrained loads (model + tokenizer)")
    parser.add_argument("--model-name", default="teacher", help="model name clients ask for")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--max-logprobs", type=int, default=20, help="largest logprobs/prompt_logprobs accepted")
    parser.add_argument("--latency-s", type=float, default=0.0, help="seconds added to every completions request")
    parser.add_argument("--faults", default="{}", help='JSON fault rates, e.g. {"500": 0.1, "timeout": 0.02}')
    parser.add_argument("--hang-s", type=float, default=5.0, help="how long a 'timeout' fault hangs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    faults = Faults(rates=json.loads(args.faults), seed=args.seed, hang_s=args.hang_s)
    server = TeacherServer(model, tokenizer, model_name=args.model_name, max_logprobs=args.max_logprobs,
                           latency_s=args.latency_s, faults=faults, port=args.port)
    print(f"READY {server.base_url}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()


if __name__ == "__main__":
    main()
