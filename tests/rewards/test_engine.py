"""One engine for every caller: the warm pool, the batch paths of curation and evaluation, and the
sandbox settings reaching the workers from every entry point."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from fastdistill.rewards import (
    SandboxSettings,
    clear_cache,
    close_idle_workers,
    mutation_score,
    run_tests,
    sandbox,
)

CODE = "def add(a, b):\n    return a + b\n"
GOOD = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 5\n    assert add(-1, 1) == 0\n"
BAD = "from solution import add\n\ndef test_add():\n    assert add(2, 3) == 6\n"


def _limit_tests(mb):
    """A test file that passes only inside a sandbox whose address-space limit is ``mb`` MB."""
    return ("import resource\nfrom solution import add\n\ndef test_limit():\n"
            f"    assert resource.getrlimit(resource.RLIMIT_AS)[0] == {mb} * 1024 * 1024\n    assert add(1, 1) == 2\n")


@pytest.fixture(autouse=True)
def _fresh():
    close_idle_workers()
    clear_cache()
    yield
    close_idle_workers()


def _pool_pids():
    return sorted(w.proc.pid for w in sandbox._IDLE if w.owner_pid == os.getpid())


def test_single_calls_reuse_one_warm_worker_and_it_keeps_no_pair_files():
    assert _pool_pids() == []
    first = run_tests(CODE, GOOD)
    pids = _pool_pids()
    assert first.ok and len(pids) == 1  # started lazily by the first call, kept warm
    for _ in range(3):
        assert run_tests(CODE, GOOD).ok
        assert not run_tests(CODE, BAD).ok
    assert _pool_pids() == pids  # the same worker served every call
    worker = sandbox._IDLE[0]
    # nothing of a pair survives it (an idle worker's spare zygote warms up in a w<hex> directory of its own)
    left = [e for e in os.listdir(worker.workdir) if not re.fullmatch(r"w[0-9a-f]{16}", e)]
    assert left == ["fastdistill_pytest.ini"]


def test_keep_warm_false_leaves_nothing():
    run = run_tests(CODE, GOOD, keep_warm=False)
    assert run.ok and _pool_pids() == []


def test_idle_workers_are_stopped(monkeypatch):
    monkeypatch.setattr(sandbox, "IDLE_TIMEOUT_S", 0.3)
    assert run_tests(CODE, GOOD).ok
    (worker,) = [w for w in sandbox._IDLE]
    pid = worker.proc.pid
    deadline = time.monotonic() + 10
    while (sandbox._IDLE or worker.workdir is not None) and time.monotonic() < deadline:
        time.sleep(0.1)  # (the reaper takes it out of the pool, then stops it)
    assert not sandbox._IDLE
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert worker.workdir is None  # its directory is removed


def test_a_forked_child_does_not_use_the_parents_workers():
    assert run_tests(CODE, GOOD).ok
    parent_pids = _pool_pids()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            before = len(sandbox._IDLE)
            ok = run_tests(CODE, GOOD, keep_warm=False).ok
            os.write(write_fd, json.dumps([before, ok]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    before, ok = json.loads(os.read(read_fd, 1000))
    os.close(read_fd)
    assert before == 0 and ok  # the child started its own worker
    assert _pool_pids() == parent_pids and run_tests(CODE, GOOD).ok  # the parent's worker is untouched


def test_mutation_score_single_call_equals_batched():
    from fastdistill.data.examples import load_examples
    from fastdistill.rewards import mutation_scores

    examples = load_examples()[:4]
    single = [mutation_score(e["code"], e["tests"], max_mutants=8, use_cache=False) for e in examples]
    batch = mutation_scores([e["code"] for e in examples], [e["tests"] for e in examples], max_mutants=8,
                            use_cache=False)
    assert [[m.killed for m in r.mutants] for r in single] == [[m.killed for m in r.mutants] for r in batch]
    assert all(r.baseline_run is not None and r.baseline_run.ok for r in single)


def _rows_without_time(rows):
    return [{k: v for k, v in r.items() if k != "tests_time_s"} for r in rows]


def test_tests_exec_eval_batch_equals_the_row_by_row_path():
    import datasets

    from fastdistill.curation import tests_exec_eval
    from fastdistill.curation.tests_eval import TESTS_COLUMNS, eval_tests_one
    from fastdistill.data.examples import load_examples

    datasets.disable_progress_bars()
    examples = load_examples()[:6]
    codes = [e["code"] for e in examples] + [CODE, CODE, None, "def broken(:\n", CODE, CODE, "  \n"]
    tests = [e["tests"] for e in examples] + [BAD, GOOD, GOOD, GOOD, "def test_x(:\n", "def helper():\n    pass\n",
                                              GOOD]
    ds = datasets.Dataset.from_dict({"code": codes, "tests": tests})
    out = tests_exec_eval(ds, max_mutants=10, batch_size=5)  # several batches
    batched = [{k: out[k][i] for k in TESTS_COLUMNS} for i in range(len(ds))]
    clear_cache()
    reference = [eval_tests_one(c, t, max_mutants=10) for c, t in zip(codes, tests)]
    assert _rows_without_time(batched) == _rows_without_time(reference)
    errors = [r["tests_error"] for r in batched]
    assert errors[6:] == ["tests_failed", None, "missing_input", "test_errors", "test_errors", "no_tests",
                          "missing_input"]
    assert all(r["kill_rate"] is not None for r in batched[:6])


def test_settings_coerce_and_validate():
    assert SandboxSettings.coerce(None) == SandboxSettings()
    assert SandboxSettings.coerce('{"memory_mb": 512}').memory_mb == 512
    assert SandboxSettings.coerce({"max_mutants": None}).max_mutants is None
    with pytest.raises(ValueError, match="unknown sandbox settings"):
        SandboxSettings.coerce({"memory": 512})
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxSettings(memory_mb=1)
    assert SandboxSettings().replace(workers=None, seed=3) == SandboxSettings(seed=3)


def test_settings_reach_the_workers_from_the_reward_functions():
    from fastdistill.rewards import composite_reward

    completions = [f"```python\n{_limit_tests(700)}```"]
    reward = composite_reward(weights={"speed_stability": 1.0}, sandbox={"memory_mb": 700})
    assert reward(prompts=[None], completions=completions, code=[CODE])[0] > 0
    default = composite_reward(weights={"speed_stability": 1.0})
    assert default(prompts=[None], completions=completions, code=[CODE])[0] == 0  # 1024 MB there


def test_settings_reach_the_workers_from_the_curation_yaml(tmp_path):
    import yaml

    from fastdistill.curation.cli import run_pipeline

    rows = [{"code": CODE, "tests": _limit_tests(600)}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = yaml.safe_load("""
input: {path: rows.jsonl}
steps:
  - tests_exec_eval: {mutation: false, sandbox: {memory_mb: 600, test_timeout_s: 20}}
output: {dir: out}
""")
    run_pipeline(config, tmp_path)
    out = [json.loads(line) for line in (tmp_path / "out" / "curated.jsonl").read_text().splitlines()]
    assert out[0]["tests_passed"] is True, out


def test_settings_reach_the_workers_from_the_eval_cli(tmp_path, capsys):
    from fastdistill.evaluation.cli import main

    gens = tmp_path / "gens.jsonl"
    gens.write_text(json.dumps({"code": CODE, "completion": f"```python\n{_limit_tests(650)}```"}) + "\n")
    out = tmp_path / "eval.json"
    status = main(["--generations", str(gens), "--metrics", "mutation,speed", "--repeats", "2",
                   "--sandbox-memory-mb", "650", "--max-mutants", "3", "--out", str(out)])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["sandbox"]["memory_mb"] == 650 and result["sandbox"]["max_mutants"] == 3
    assert result["mutation"]["pass_rate"] == 1.0 and result["speed"]["pass_rate"] == 1.0
    assert main(["--generations", str(gens), "--sandbox", '{"memroy_mb": 1}']) == 2
    assert "unknown sandbox settings" in capsys.readouterr().err
