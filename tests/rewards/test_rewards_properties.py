"""Property-based tests (hypothesis) of extraction and the reward functions' batch handling.

The reward examples use a scorer that does not start the sandbox (its value depends on the row's own
code and tests only), plus a few real-reward examples whose completions hold no test file, so no
sandbox work is started either.
"""

from __future__ import annotations

import ast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastdistill.rewards import extract_test_code
from fastdistill.rewards.functions import MutantKillReward, _completion_text

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PIECES = ["def test_a():\n    assert 1\n", "import pytest\n", "```python\n", "```\n", "```py\n", "Sure, here you go:\n",
          "This covers edge cases.\n", "def broken(:\n", "    x = (\n", '"""\n', "\ufeff", "\x00", "\n\n", "@pytest.fixture\n",
          "class TestX:\n    def test_m(self):\n        pass\n", "async def test_b():\n    pass\n", "é\u200b\n"]
completion_texts = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(PIECES), max_size=12).map("".join),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=20)), max_size=10).map("".join),
)
completions = st.one_of(
    completion_texts, st.none(), st.integers(), st.binary(max_size=20),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["assistant", "user"]),
                                    "content": st.one_of(st.none(), completion_texts)}), max_size=3),
    st.fixed_dictionaries({"content": completion_texts}),
)


def _has_test(tree) -> bool:
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name.startswith("test")
               for n in ast.walk(tree))


@FAST
@given(completions)
def test_extracted_tests_always_parse_and_hold_a_test(completion):
    out = extract_test_code(completion)
    if out is not None:
        assert _has_test(ast.parse(out))
        assert out.strip()


@FAST
@given(completion_texts)
def test_a_fenced_test_file_is_found_whatever_surrounds_it(noise):
    body = "def test_found():\n    assert 2 + 2 == 4\n"
    out = extract_test_code(f"{noise.replace('```', '')}\n```python\n{body}```\n{noise.replace('```', '')}")
    assert out is not None and "def test_found" in out


class _NoSandbox(MutantKillReward):
    def score(self, codes, tests):
        return [float(len(c) % 7) + (0.5 if t else 0.0) for c, t in zip(codes, tests)]


CODES = st.one_of(st.none(), st.integers(), st.just(""), st.just("  \n"), st.text(min_size=1, max_size=30),
                  st.just("def f(x):\n    return x\n"), st.lists(st.text(max_size=3), max_size=2))


@FAST
@given(st.lists(st.tuples(completions, CODES), min_size=0, max_size=8))
def test_reward_batch_rows_are_independent(rows):
    reward = _NoSandbox()
    comps, codes = [r[0] for r in rows], [r[1] for r in rows]
    values = reward(prompts=["p"] * len(rows), completions=comps, code=codes)
    assert len(values) == len(rows)
    for (completion, code), value in zip(rows, values):
        if not isinstance(code, str) or not code.strip():
            assert value is None  # the bad row gets its own error value
        else:
            assert value == reward(prompts=["p"], completions=[completion], code=[code])[0]


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["no tests here", "```python\nx = 1\n```", ""]), CODES), max_size=4))
def test_real_reward_without_test_files_scores_zero_or_none(rows):
    reward = MutantKillReward(n_workers=1, max_mutants=2)
    values = reward(completions=[r[0] for r in rows], code=[r[1] for r in rows])
    for (_, code), value in zip(rows, values):
        assert value == (0.0 if isinstance(code, str) and code.strip() else None)


@FAST
@given(completions)
def test_completion_text_is_always_a_string(completion):
    assert isinstance(_completion_text(completion), str)
