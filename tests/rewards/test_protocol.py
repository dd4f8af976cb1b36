"""The sandbox protocol: one wire form for pair specs, jobs and results, and one 'killed' rule."""

import json

import pytest

from fastdistill.rewards import _child
from fastdistill.rewards.protocol import (
    Gate,
    Job,
    JobResult,
    MutationRequest,
    PairResult,
    PairSpec,
    TestRequest,
    from_wire,
    to_wire,
)
from fastdistill.rewards.sandbox import execute_pairs

CODE = "def add(a, b):\n    return a + b\n"
TESTS = "from solution import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"


def test_a_pair_spec_round_trips_through_json():
    spec = PairSpec(code=CODE, tests=TESTS, module_name="solution", write_module=False, timeout_s=12.5, id=3,
                    gate=Gate(factor=5.0, min_s=1.0, max_s=60.0, cpu_min_s=0.2),
                    jobs=[Job(source=CODE, timeout_s=10.0, group=0, base=True, needs=[]),
                          Job(source=CODE.replace("+", "-"), stop_first=True, group=0, base=False, needs=[0]),
                          Job(source=CODE, stop_first=True, group=1, base=False, needs=[1, 0], needs_killed=1)])
    wire = json.loads(json.dumps(to_wire(spec)))
    assert from_wire(PairSpec, wire) == spec
    assert wire["gate"] == {"factor": 5.0, "min_s": 1.0, "max_s": 60.0, "cpu_min_s": 0.2}
    assert "needs_killed" not in wire["jobs"][0] and wire["jobs"][2]["needs_killed"] == 1


def test_optional_job_keys_are_left_out_so_the_workers_defaults_apply():
    """A job without base/needs/group is job 0's baseline or needs job 0, as the worker reads it."""
    assert to_wire(Job(timeout_s=9.5)) == {"source": None, "stop_first": False, "timeout_s": 9.5}
    assert to_wire(PairSpec(code=CODE, tests=TESTS, jobs=[Job()], timeout_s=1.0))["gate"] is None


def test_results_round_trip_and_unknown_message_keys_are_dropped():
    job = {"t": "job", "i": 1, "status": "timeout", "tests": [["t.py::a", "passed", 0.1, ""]],
           "collect_errors": [], "duration_s": 2.0, "exit": "killed by signal 9", "recollected": False,
           "cpu_s": 0.5, "killed": True}
    typed = from_wire(JobResult, job)
    assert typed.killed is True and typed.tests == [["t.py::a", "passed", 0.1, ""]]
    assert to_wire(typed) == {k: v for k, v in job.items() if k != "t"}
    pair = from_wire(PairResult, {"t": "pair", "id": 0, "jobs": [job], "completed": True, "timed_out": False,
                                  "exit": "", "duration_s": 3.0, "oom_kills": 0, "zygote": "warm"})
    assert pair.jobs == [typed] and pair.zygote == "warm" and pair.reason == "" and pair.returncode is None
    assert from_wire(PairResult, to_wire(pair)) == pair
    assert to_wire(PairResult.failed("no")) == {"jobs": [], "completed": False, "timed_out": False, "output": "",
                                                "returncode": None, "reason": "no", "exit": "", "duration_s": 0.0,
                                                "oom_kills": 0, "zygote": ""}


def test_requests_are_tuples():
    assert MutationRequest(CODE, TESTS) == (CODE, TESTS, None, None)
    code, tests, mutants, needs = MutationRequest(CODE, TESTS, 5, 0)
    assert (mutants, needs) == (5, 0)
    assert TestRequest(CODE, TESTS) == (CODE, TESTS, 1)


@pytest.mark.parametrize(("result", "killed"), [
    ({"status": "ok", "collect_errors": [], "tests": [["a", "passed", 0, ""]]}, False),
    ({"status": "ok", "collect_errors": [], "tests": [["a", "passed", 0, ""], ["b", "skipped", 0, ""]]}, False),
    ({"status": "ok", "collect_errors": [], "tests": []}, False),
    ({"status": "ok", "collect_errors": [], "tests": [["a", "failed", 0, "x"]]}, True),
    ({"status": "ok", "collect_errors": [], "tests": [["a", "error", 0, "x"]]}, True),
    ({"status": "ok", "collect_errors": [["solution", "module failed to import"]], "tests": []}, True),
    ({"status": "timeout", "collect_errors": [], "tests": [["a", "passed", 0, ""]]}, True),
    ({"status": "crash", "collect_errors": [], "tests": []}, True),
    ({"status": "memory", "collect_errors": [], "tests": []}, True),
])
def test_the_one_killed_rule(result, killed):
    assert _child._Server._killed(result) is killed


def test_what_the_worker_sends_is_what_the_protocol_describes(monkeypatch):
    """Every key of a real pair result message and of its job results is a field of the dataclasses (no drift)."""
    from fastdistill.rewards import sandbox

    seen = []

    def recording(cls, data):
        if cls is PairResult:
            seen.append(data)
        return from_wire(cls, data)

    monkeypatch.setattr(sandbox, "from_wire", recording)
    mutant = CODE.replace("+", "-")
    spec = PairSpec(code=CODE, tests=TESTS, write_module=False, timeout_s=30.0,
                    gate=Gate(factor=5.0, min_s=1.0, max_s=10.0, cpu_min_s=0.2),
                    jobs=[Job(source=CODE, timeout_s=10.0, group=0, base=True, needs=[]),
                          Job(source=mutant, stop_first=True, group=0, base=False, needs=[0])])
    (typed,) = execute_pairs([spec], memory_mb=1024)
    (message,) = seen  # the worker's own "pair" message, as it came off the pipe
    assert set(message) <= set(PairResult.__dataclass_fields__) | {"t", "id"} and message["completed"]
    assert all(set(job) <= set(JobResult.__dataclass_fields__) | {"t"} for job in message["jobs"])
    assert isinstance(typed, PairResult) and all(isinstance(j, JobResult) for j in typed.jobs)
    assert [j.killed for j in typed.jobs] == [None, True]  # the verdict comes with the mutant, from the worker
