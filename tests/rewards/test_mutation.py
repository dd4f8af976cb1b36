"""Mutation engine: operators, determinism, scores on bundled examples, caching."""

import pytest

from fastdistill.data.examples import load_examples
from fastdistill.rewards import clear_cache, generate_mutants, mutation_score, mutation_scores
from fastdistill.rewards.mutation import OPERATORS

EXAMPLES = {e["name"]: e for e in load_examples()}


def test_operators_covered_and_deterministic():
    code = (
        "def f(xs, k):\n"
        "    out = []\n"
        "    for i in range(len(xs)):\n"
        "        if xs[i] > k and not i == 0:\n"
        "            out.append(-xs[i] * 2)\n"
        "            continue\n"
        "        while k < 0:\n"
        "            break\n"
        "        flag = True\n"
        "        out.append(xs[1:k] + 'a')\n"
        "    return out\n"
    )
    mutants = generate_mutants(code)
    assert {m.operator for m in mutants} == set(OPERATORS)
    assert len({m.source for m in mutants}) == len(mutants)
    assert all(m.source != code and m.line >= 1 for m in mutants)
    again = generate_mutants(code)
    assert [m.source for m in again] == [m.source for m in mutants]
    subset = generate_mutants(code, max_mutants=5, seed=1)
    assert len(subset) == 5 and [m.source for m in subset] == [m.source for m in generate_mutants(code, max_mutants=5, seed=1)]
    for m in mutants:
        compile(m.source, "<m>", "exec")


def _naive_mutants(code):
    """Reference: a deep copy of the tree per mutation point, re-scanned, then unparsed (obviously correct, slow)."""
    import ast
    import copy

    from fastdistill.rewards.mutants import _apply, _candidates

    tree = ast.parse(code)
    seen, out = {ast.unparse(tree)}, []
    for index in range(len(_candidates(tree))):
        copy_tree = copy.deepcopy(tree)
        node, operator, description, payload = _candidates(copy_tree)[index]
        replacement = _apply(node, operator, payload)
        if replacement is not None:
            class Replace(ast.NodeTransformer):
                def visit(self, n):
                    return replacement if n is node else self.generic_visit(n)

            copy_tree = Replace().visit(copy_tree)
        try:
            source = ast.unparse(copy_tree)
            compile(source, "<m>", "exec")
        except (SyntaxError, ValueError, TypeError, RecursionError):
            continue
        if source not in seen:
            seen.add(source)
            out.append((operator, node.lineno, description, source))
    return out


def test_in_place_generation_equals_deep_copy_reference():
    """generate_mutants mutates one tree in place and undoes each change; it must equal a fresh copy per mutant."""
    from fastdistill.augment import robust_augment
    from fastdistill.data.examples import load_examples

    codes = [e["code"] for e in load_examples()]
    codes += [robust_augment(c, seed=1) for c in codes[:10]]
    for code in codes:
        got = [(m.operator, m.line, m.description, m.source) for m in generate_mutants(code)]
        assert got == _naive_mutants(code), code[:60]


def test_docstrings_not_mutated():
    mutants = generate_mutants('def f():\n    """Doc."""\n    return 1\n')
    assert all('"""Doc."""' in m.source or "'Doc.'" in m.source for m in mutants)


@pytest.mark.slow
def test_reference_tests_kill_most_and_weak_tests_kill_fewer():
    clear_cache()
    names = ["binary_search", "to_roman", "caesar_cipher", "parse_duration"]
    codes = [EXAMPLES[n]["code"] for n in names]
    ref = mutation_scores(codes, [EXAMPLES[n]["tests"] for n in names], n_workers=2, max_mutants=25)
    for name, res in zip(names, ref):
        assert res.baseline_ok, (name, res.reason)
        assert res.kill_rate >= 0.8, (name, res.kill_rate)
        assert res.total == len(res.mutants) == res.killed + res.survived
    weak_tests = {
        "binary_search": "from solution import binary_search\n\ndef test_one():\n    assert binary_search([1, 2, 3], 2) == 1\n",
        "to_roman": "from solution import to_roman\n\ndef test_one():\n    assert to_roman(3) == 'III'\n",
        "caesar_cipher": "from solution import caesar\n\ndef test_one():\n    assert caesar('a', 1) == 'b'\n",
        "parse_duration": "from solution import parse_duration\n\ndef test_one():\n    assert parse_duration('45s') == 45\n",
    }
    weak = mutation_scores(codes, [weak_tests[n] for n in names], n_workers=2, max_mutants=25)
    for name, strong, w in zip(names, ref, weak):
        assert w.baseline_ok and w.kill_rate < strong.kill_rate, (name, w.kill_rate, strong.kill_rate)


def test_assert_free_and_empty_tests_kill_nothing():
    code = EXAMPLES["clamp"]["code"]
    no_assert = mutation_score(code, "from solution import clamp\n\ndef test_nothing():\n    pass\n")
    assert no_assert.baseline_ok and no_assert.total > 0 and no_assert.killed == 0 and no_assert.kill_rate == 0.0
    empty = mutation_score(code, "")
    assert empty.kill_rate == 0.0 and not empty.baseline_ok and "no test" in empty.reason


def test_failing_on_original_scores_zero_with_reason():
    code = EXAMPLES["clamp"]["code"]
    res = mutation_score(code, "from solution import clamp\n\ndef test_bad():\n    assert clamp(5, 0, 3) == 5\n")
    assert res.kill_rate == 0.0 and not res.baseline_ok and "fail on the original" in res.reason
    assert mutation_score(code, "def test_x(:\n").kill_rate == 0.0


def test_infinite_loop_mutants_time_out_and_count_as_killed():
    code = "def countdown(n):\n    out = []\n    while n > 0:\n        out.append(n)\n        n -= 1\n    return out\n"
    tests = "from solution import countdown\n\ndef test_c():\n    assert countdown(3) == [3, 2, 1]\n    assert countdown(0) == []\n"
    res = mutation_score(code, tests, max_mutants=None, use_cache=False)
    assert res.baseline_ok and res.timed_out >= 1
    assert all(m.killed for m in res.mutants if m.timed_out)


def test_cache_returns_same_result_without_rerunning():
    clear_cache()
    e = EXAMPLES["running_sum"]
    first = mutation_score(e["code"], e["tests"])
    second = mutation_score(e["code"], e["tests"])
    assert not first.cached and second.cached
    assert (second.killed, second.total) == (first.killed, first.total)
