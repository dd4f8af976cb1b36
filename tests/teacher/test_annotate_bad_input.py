"""``fastdistill annotate`` with bad input: config refused up front, dead server fails fast, nothing lost."""

from __future__ import annotations

import json
import socket

import datasets
import pytest

from fastdistill.teacher import cli as annotate_cli
from fastdistill.teacher.annotate import AnnotationReport
from fastdistill.validation import ConfigError

ROWS = [{"prompt": f"Write a test for add({i})", "completion": f"def test_add():\n    assert add({i})"} for i in range(4)]


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_unreachable_server_fails_fast_and_keeps_the_existing_output(tmp_path, capsys):
    from fastdistill.cli import main

    _write_rows(tmp_path / "data.jsonl", ROWS)
    good = "".join(json.dumps({**r, "teacher_logprobs": [-0.5]}) + "\n" for r in ROWS)
    (tmp_path / "annotated.jsonl").write_text(good)
    url = _closed_port_url()
    (tmp_path / "a.yaml").write_text(
        f"input: {{path: data.jsonl}}\noutput: {{path: annotated.jsonl}}\n"
        f"teacher: {{server: {{base_url: '{url}', model: teacher}}, tokenizer: some/tokenizer}}\n"
        "completion_column: completion\n")
    assert main(["annotate", "--config", str(tmp_path / "a.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert url in err and "cannot reach" in err and "Traceback" not in err
    assert (tmp_path / "annotated.jsonl").read_text() == good  # not replaced by an empty file


def test_probe_accepts_any_http_answer(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        annotate_cli.probe_server(f"http://127.0.0.1:{httpd.server_address[1]}/v1", timeout=5)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_config_lists_every_problem_before_any_work():
    config = {"input": {"path": "d.jsonl"}, "output": {"path": "o.csv"}, "promt_column": "p",
              "teacher": {"server": {"base_url": "localhost:8000", "model": "t", "timeout": -1, "max_retrys": 2}},
              "temperature": float("nan"), "batch_size": 0, "on_error": "ignore"}
    with pytest.raises(ConfigError) as err:
        annotate_cli.validate_config(config, "annotate.yaml")
    msg = str(err.value)
    for expected in ["promt_column: unknown key (did you mean 'prompt_column'?)", "output.path: o.csv must end in",
                     "teacher.server.base_url: expected an http:// or https:// URL",
                     "teacher.server.timeout: must be > 0", "teacher.server.max_retrys: unknown key (did you mean "
                     "'max_retries'?)", "temperature: expected a finite number", "batch_size: must be >= 1",
                     "on_error: must be one of", "teacher.tokenizer: required with a server"]:
        assert expected in msg, (expected, msg)


def _fake_run(monkeypatch, tmp_path, failures):
    """run_annotate with the teacher and the annotation replaced: ``failures`` rows fail."""
    seen = {}

    def fake_annotate(ds, teacher, *, cache_dir=None, **kwargs):
        seen["cache_dir"] = cache_dir
        keep = ds.select(range(len(ds) - failures))
        report = AnnotationReport(rows_in=len(ds), rows_out=len(keep),
                                  failures=[{"row": i, "reason": "boom"} for i in range(len(keep), len(ds))])
        return keep.add_column("teacher_logprobs", [[-0.1]] * len(keep)), report

    import importlib

    monkeypatch.setattr(importlib.import_module("fastdistill.teacher.annotate"), "annotate", fake_annotate)
    monkeypatch.setattr(annotate_cli, "_build_teacher", lambda spec, base: object())
    _write_rows(tmp_path / "data.jsonl", ROWS)
    config = {"input": {"path": "data.jsonl"}, "output": {"path": "out.jsonl"}, "teacher": {"model": "m"}}
    return annotate_cli.run_annotate(config, tmp_path, progress=False), seen


def test_failed_rows_never_replace_an_existing_output(monkeypatch, tmp_path):
    (tmp_path / "out.jsonl").write_text("good rows\n")
    (code, summary), _ = _fake_run(monkeypatch, tmp_path, failures=2)
    assert code == 1
    assert (tmp_path / "out.jsonl").read_text() == "good rows\n"
    partial = tmp_path / "out.partial.jsonl"
    assert summary["output"] == str(partial) and len(partial.read_text().splitlines()) == 2


def test_nothing_annotated_writes_nothing(monkeypatch, tmp_path):
    (code, summary), _ = _fake_run(monkeypatch, tmp_path, failures=len(ROWS))
    assert code == 1 and summary["output"] is None and not (tmp_path / "out.jsonl").exists()
    assert json.loads((tmp_path / "out.jsonl.summary.json").read_text())["rows_out"] == 0


def test_resume_is_the_default(monkeypatch, tmp_path):
    (code, summary), seen = _fake_run(monkeypatch, tmp_path, failures=0)
    assert code == 0 and seen["cache_dir"] == tmp_path / "out.jsonl.cache"
    assert datasets.Dataset.from_json(str(tmp_path / "out.jsonl")).num_rows == len(ROWS)


@pytest.mark.parametrize("content, expected", [("", "is empty"), ('{"prompt": \n', "line 1 is not valid JSON")])
def test_bad_input_file_named(tmp_path, capsys, content, expected):
    (tmp_path / "data.jsonl").write_text(content)
    (tmp_path / "a.yaml").write_text("input: {path: data.jsonl}\noutput: {path: o.jsonl}\nteacher: {model: m}\n")
    assert annotate_cli.main(["--config", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "data.jsonl" in err
