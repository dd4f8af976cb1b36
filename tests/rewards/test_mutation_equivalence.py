"""The fast mutation path (collect once, swap the CUT per mutant) must decide every mutant exactly
as a straightforward run does: the mutant written to disk as ``solution.py`` and the tests
collected from scratch by a fresh pytest process state, all tests run, no shortcuts."""

import pytest

from fastdistill.data.examples import load_examples
from fastdistill.rewards import generate_mutants, mutation_scores
from fastdistill.rewards._child import _Server
from fastdistill.rewards.protocol import to_wire
from fastdistill.rewards.sandbox import execute_pairs

EXAMPLES = {e["name"]: e for e in load_examples()}


def _reference_kills(code, tests, max_mutants):
    """killed/timed-out per mutant: each mutant is its own pair (file on disk, fresh collection)."""
    mutants = generate_mutants(code, max_mutants=max_mutants)
    specs = [{"code": m.source, "tests": tests, "module_name": "solution", "write_module": True,
              "jobs": [{"source": None, "stop_first": False, "timeout_s": 2.0}], "timeout_s": 5.0}
             for m in mutants]
    out = []
    for raw in execute_pairs(specs, memory_mb=1024, n_workers=2):
        job = raw.jobs[0] if raw.jobs else None
        if job is None:
            out.append((True, True))
            continue
        out.append((_Server._killed(to_wire(job)), job.status == "timeout"))  # the worker's one rule
    return out


def _assert_same(code, tests, max_mutants=30):
    fast = mutation_scores([code], [tests], max_mutants=max_mutants, use_cache=False)[0]
    assert fast.baseline_ok, fast.reason
    reference = _reference_kills(code, tests, max_mutants)
    assert len(reference) == len(fast.mutants) == fast.total > 0
    compared = 0
    for mutant, (ref_killed, ref_timed_out) in zip(fast.mutants, reference):
        if mutant.timed_out or ref_timed_out:
            continue  # budgets differ on purpose (fast: CPU budget); both count a timeout as killed
        assert mutant.killed == ref_killed, (mutant, ref_killed)
        compared += 1
    assert compared >= len(reference) // 2
    return fast


@pytest.mark.parametrize("name", ["bank_account", "interval_merge", "stack_class"])
def test_fast_path_matches_fresh_collection_on_examples(name):
    e = EXAMPLES[name]
    fast = _assert_same(e["code"], e["tests"])
    assert 0 < fast.killed < fast.total  # both killed and surviving mutants were compared


CODE = (
    "LIMIT = 10\n\n"
    "def clamp(x, lo=0, hi=LIMIT):\n"
    "    if x < lo:\n"
    "        return lo\n"
    "    if x > hi:\n"
    "        return hi\n"
    "    return x\n\n"
    "class Counter:\n"
    "    def __init__(self, start=0):\n"
    "        self.n = start\n\n"
    "    def bump(self, k=1):\n"
    "        self.n += k\n"
    "        return self.n\n"
)


def test_module_level_values_default_args_classes_fixtures_and_module_imports():
    tests = (
        "import pytest\n"
        "import solution\n"
        "from solution import *\n"
        "from solution import clamp as c\n\n"
        "EXPECTED = c(50)\n"  # computed from the CUT at import time
        "def test_module_level():\n    assert EXPECTED == 10\n\n"
        "def test_default_arg(f=clamp):\n    assert f(-3) == 0\n\n"
        "def test_module_attr():\n    assert solution.LIMIT == 10 and solution.clamp(4) == 4\n\n"
        "@pytest.fixture\n"
        "def counter():\n    return Counter(5)\n\n"
        "class TestCounter:\n"
        "    start = Counter().n\n"
        "    def test_bump(self, counter):\n        assert counter.bump() == 6 and self.start == 0\n"
        "    def test_bump_k(self):\n        assert Counter(1).bump(2) == 3\n"
    )
    _assert_same(CODE, tests, max_mutants=None)


def test_parametrize_computed_from_the_cut_recollects():
    # parametrize values come from the CUT, so collection itself changes with each mutant
    tests = (
        "import pytest\n"
        "from solution import clamp, LIMIT\n\n"
        "@pytest.mark.parametrize('x, expected', [(-1, 0), (5, 5), (99, LIMIT)])\n"
        "def test_clamp(x, expected):\n    assert clamp(x) == expected\n\n"
        "@pytest.mark.parametrize('k', range(clamp(2)))\n"
        "def test_count(k):\n    assert 0 <= k < 10\n"
    )
    _assert_same(CODE, tests, max_mutants=None)


def test_helper_modules_the_tests_import_from_the_pair_directory_see_each_mutant():
    # a module the tests write next to themselves and import: a swap must drop it so it re-imports the mutant
    tests = (
        "import pathlib\n"
        "pathlib.Path('clamp_helper.py').write_text('from solution import clamp\\nVALUE = clamp(50)\\n')\n"
        "import clamp_helper\n\n"
        "def test_through_the_helper():\n"
        "    assert clamp_helper.VALUE == 10\n"
        "    assert clamp_helper.clamp(-3) == 0 and clamp_helper.clamp(4) == 4\n"
    )
    fast = _assert_same(CODE, tests, max_mutants=None)
    assert fast.killed > 0
