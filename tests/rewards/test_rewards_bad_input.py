"""Bad input to the reward functions: bad rows isolated, weights and settings refused, bounded extraction."""

import ast
import math

import pytest

from fastdistill.data.examples import load_examples
from fastdistill.rewards import composite_reward, extract_test_code, mutation_score
from fastdistill.rewards import functions as F
from fastdistill.rewards.functions import MutantKillReward, RobustnessReward, SpeedStabilityReward

EX = {e["name"]: e for e in load_examples()}
CODE = EX["clamp"]["code"]
TESTS = EX["clamp"]["tests"]


class _LengthReward(MutantKillReward):
    """No sandbox: the value of a row is a function of its own code and tests only."""

    def score(self, codes, tests):
        return [len(c) + (len(t) if t else 0) for c, t in zip(codes, tests)]


@pytest.mark.parametrize("bad", [None, 3, "", "   ", ["def f(): pass"]])
def test_one_bad_code_row_changes_no_other_row(bad):
    reward = _LengthReward()
    completions = [f"```python\n{TESTS}```", "no tests", f"```python\n{TESTS}```"]
    alone = reward(completions=[completions[0], completions[2]], code=[CODE, CODE + "\n"])
    mixed = reward(completions=completions, code=[CODE, bad, CODE + "\n"])
    assert mixed[1] is None  # its own error value, not 0 for everyone
    assert [mixed[0], mixed[2]] == alone
    assert list(reward.last_bad_rows) == [1]
    assert reward(completions=["x"], code=[bad]) == [None]


def test_none_code_row_with_the_real_sandbox():
    weak = "```python\nfrom solution import clamp\n\ndef test_one():\n    assert clamp(5, 0, 10) == 5\n```"
    reward = MutantKillReward(max_mutants=4, n_workers=1)
    alone = reward(completions=[f"```python\n{TESTS}```", weak], code=[CODE, CODE])
    mixed = reward(completions=[f"```python\n{TESTS}```", weak, weak], code=[CODE, None, CODE])
    assert mixed[1] is None and alone[0] > 0 and [mixed[0], mixed[2]] == alone


class _BreaksOnMarker(_LengthReward):
    """Scoring raises (an unexpected bug, not bad input) whenever a batch holds a code with 'BOOM'."""

    def score(self, codes, tests):
        if any("BOOM" in c for c in codes):
            raise KeyError("BOOM")
        return super().score(codes, tests)


def test_a_row_that_breaks_scoring_gets_none_and_the_others_keep_their_values():
    reward = _BreaksOnMarker()
    completions = [f"```python\n{TESTS}```"] * 3
    alone = reward(completions=completions[:2], code=[CODE, CODE + "\n"])
    mixed = reward(completions=completions, code=[CODE, CODE + "# BOOM\n", CODE + "\n"])
    assert mixed[1] is None and [mixed[0], mixed[2]] == alone and 0.0 not in alone
    assert list(reward.last_bad_rows) == [1] and "KeyError" in reward.last_bad_rows[1]


def test_a_batch_where_no_row_can_be_scored_raises():
    with pytest.raises(F.RewardError, match="no row of the batch could be scored.*KeyError"):
        _BreaksOnMarker()(completions=["x", "y"], code=[CODE + "# BOOM", "BOOM"])


def test_a_non_finite_component_value_is_not_a_zero(monkeypatch):
    reward = composite_reward({"mutant_kill": 1.0, "speed_stability": 1.0}, n_workers=1, max_mutants=2)
    monkeypatch.setattr(reward, "fused", False)
    monkeypatch.setattr(reward.components["mutant_kill"], "score",
                        lambda codes, tests: [math.nan if "NAN" in c else 0.5 for c in codes])
    monkeypatch.setattr(reward.components["speed_stability"], "score", lambda codes, tests: [1.0] * len(codes))
    out = reward(completions=[f"```python\n{TESTS}```"] * 3, code=[CODE, CODE + "# NAN\n", CODE])
    assert out[0] == out[2] == pytest.approx(0.75)
    assert out[1] is None and "not finite" in reward.last_bad_rows[1]
    assert reward.last_components["composite"] == [pytest.approx(0.75), None, pytest.approx(0.75)]


def test_missing_code_column_is_a_setup_error():
    with pytest.raises(ValueError, match="'code'"):
        _LengthReward()(completions=["x"])


@pytest.mark.parametrize("weights, match", [
    ({"mutant_kill": math.inf}, "weights.mutant_kill: expected a finite number"),
    ({"mutant_kill": 1.0, "speed_stability": -1}, "weights.speed_stability: must be >= 0"),
    ({"mutant_kill": math.nan}, "weights.mutant_kill: expected a finite number"),
    ({"mutant_kil": 1.0}, "did you mean 'mutant_kill'"),
    ({"mutant_kill": 0.0}, "at least one weight must be > 0"),
    ({"mutant_kill": True}, "expected a finite number"),
])
def test_reward_weights_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        composite_reward(weights)


def test_all_bad_weights_reported_together():
    with pytest.raises(ValueError) as err:
        composite_reward({"mutant_kill": math.inf, "robustness": -1, "speed": 1})
    msg = str(err.value)
    assert "mutant_kill" in msg and "robustness" in msg and "did you mean 'speed_stability'" in msg


@pytest.mark.parametrize("cls, kwargs, match", [
    (MutantKillReward, dict(timeout_s=-1), "timeout_s"),
    (MutantKillReward, dict(max_mutants=0), "max_mutants"),
    (MutantKillReward, dict(memory_mb=math.nan), "memory_mb"),
    (SpeedStabilityReward, dict(repeats=0), "repeats"),
    (SpeedStabilityReward, dict(ref_s=math.inf), "ref_s"),
    (RobustnessReward, dict(flip_docstrings=2.0), "flip_docstrings"),
])
def test_reward_settings_refused(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def _prose_after_tests(n: int) -> str:
    return ("import pytest\n" + "".join(f"def test_{i}():\n    assert {i} == {i}\n" for i in range(n))
            + "".join(f"This line {i} is prose that explains the tests above.\n" for i in range(n)))


def test_extract_unfenced_tests_then_prose_keeps_every_test():
    out = extract_test_code(_prose_after_tests(1000))
    assert out is not None and out.count("def test_") == 1000 and "prose" not in out


def _parsed_chars(monkeypatch, text: str) -> int:
    total = [0]
    real = ast.parse

    def counting(source, *args, **kwargs):
        total[0] += len(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(F.ast, "parse", counting)
    extract_test_code(text)
    monkeypatch.setattr(F.ast, "parse", real)
    return total[0]


@pytest.mark.parametrize("make", [
    _prose_after_tests,
    lambda n: "def test_a():\n    x = (\n" + "prose line without a closing bracket\n" * n,  # error only at the end
    lambda n: "```python\n" * n,  # many unclosed fences
    lambda n: "``` ``` ```" * n,  # fences without a newline
    lambda n: "def test_a():\n    pass\n" + "def broken(:\n" * n,
])
def test_extract_work_is_linear(monkeypatch, make):
    # work = characters handed to the parser; quadratic extraction would do ~16x the work for 4x the text
    small, big = make(200), make(800)
    w_small, w_big = _parsed_chars(monkeypatch, small), _parsed_chars(monkeypatch, big)
    assert w_big <= 6 * max(w_small, len(small)), (w_small, w_big)
    assert w_big <= (F.MAX_TRIMS + 4) * len(big)


def test_extract_size_cap_and_bom():
    assert extract_test_code("def test_a():\n    pass\n" + "#" * F.MAX_COMPLETION_CHARS) is None
    assert extract_test_code("\ufeff" + TESTS).strip() == TESTS.strip()
    assert extract_test_code("```python\n\ufeff" + TESTS + "```").strip() == TESTS.strip()


def test_bom_test_file_parses_for_mutation():
    plain = mutation_score(CODE, TESTS, max_mutants=4)
    bom = mutation_score(CODE, "\ufeff" + TESTS, max_mutants=4)
    assert plain.baseline_ok and bom.baseline_ok
    assert bom.kill_rate == plain.kill_rate > 0


def test_memory_error_in_the_tests_process_is_a_memory_outcome():
    """A test file that needs more memory than the budget (a huge file's compile, a big allocation)
    ends as ``out_of_memory`` with a reason that says how to raise the budget, not as a bare error."""
    from fastdistill.rewards import run_tests

    code = "def add(a, b):\n    return a + b\n"
    run = run_tests(code, "def test_big():\n    block = bytearray(8 * 1024 ** 3)\n    assert block\n",
                    memory_mb=256)
    assert run.out_of_memory and not run.ok
    assert "MemoryError" in run.reason and "memory_mb" in run.reason
    plain = run_tests(code, "def test_fails():\n    raise ValueError('no')\n", memory_mb=256)
    assert plain.failed == 1 and not plain.out_of_memory


def test_a_huge_test_function_over_the_memory_budget_is_a_memory_outcome():
    """Assertion rewriting and ``compile`` of a 6,000-line test function need more than 128 MB of address
    space: CPython then raises MemoryError or a SystemError ("error return without exception set"); either
    way the run says out of memory. The same function at 300 lines passes under the same budget."""
    from fastdistill.rewards import run_tests

    code = "def add(a, b):\n    return a + b\n"

    def tests(n):
        return "from solution import add\n\ndef test_big():\n" + "".join(
            f"    assert add({i}, 1) == {i + 1}\n" for i in range(n))

    huge = run_tests(code, tests(6000), memory_mb=128, timeout_s=60)
    assert huge.out_of_memory and not huge.ok and "memory_mb" in huge.reason
    assert run_tests(code, tests(300), memory_mb=128).ok

