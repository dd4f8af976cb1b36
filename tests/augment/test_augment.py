"""robust_augment: semantics-preserving, deterministic, keeps public names and parameters."""

import ast
from concurrent.futures import ThreadPoolExecutor

import pytest

from fastdistill.augment import robust_augment
from fastdistill.data.examples import load_examples
from fastdistill.rewards import run_tests

CODE = "def total(xs, start=0):\n    # sum it\n    acc = start\n    for x in xs:\n        acc += x\n    return acc\n"


def test_renames_locals_keeps_params_and_public_names():
    out = robust_augment(CODE, seed=1, comments=False)
    tree = ast.parse(out)
    func = tree.body[0]
    assert func.name == "total" and [a.arg for a in func.args.args] == ["xs", "start"]
    names = {n.id for n in ast.walk(func) if isinstance(n, ast.Name)}
    assert "acc" not in names and "x" not in names
    ns = {}
    exec(out, ns)  # noqa: S102 - runs the augmented code to check it still behaves
    assert ns["total"]([1, 2, 3], start=4) == 10


def test_deterministic_and_seed_dependent():
    assert robust_augment(CODE, seed=3) == robust_augment(CODE, seed=3)
    assert len({robust_augment(CODE, seed=s) for s in range(5)}) > 1
    assert "# sum it" not in robust_augment(CODE, seed=0, rename=False)


def test_no_op_options_round_trip():
    out = robust_augment(CODE, seed=0, rename=False, comments=False)
    assert ast.dump(ast.parse(out)) == ast.dump(ast.parse(CODE))


def test_flip_docstrings_controls_how_many_docstrings_change():
    code = ('def a(x):\n    """Doc a."""\n    return x\n\n\n'
            'def b(x):\n    return x\n\n\n'
            'class C:\n    """Doc C."""\n    y = 1\n')

    def docs(source):
        ns = {}
        exec(source, ns)  # noqa: S102 - runs each variant to check it still behaves
        return ns["a"].__doc__, ns["b"].__doc__, ns["C"].__doc__

    for seed in range(5):
        a, b, c = docs(robust_augment(code, seed=seed, flip_docstrings=1.0))
        assert a is None and b is not None and c is None  # every docstring state flipped
        assert docs(robust_augment(code, seed=seed, flip_docstrings=0.0)) == ("Doc a.", None, "Doc C.")
    assert len({docs(robust_augment(code, seed=s)) for s in range(12)}) > 1  # default: seeded, some flipped


def test_dynamic_scope_functions_left_alone():
    code = "def f():\n    a = 1\n    return locals()['a']\n"
    ns = {}
    exec(robust_augment(code, seed=0), ns)  # noqa: S102 - runs the augmented code
    assert ns["f"]() == 1


@pytest.mark.slow
def test_reference_tests_pass_on_augmented_code_for_all_examples():
    examples = load_examples()

    def check(example):
        augmented = robust_augment(example["code"], seed=7)
        return example["name"], augmented != example["code"], run_tests(augmented, example["tests"], timeout_s=20)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(check, examples))
    for name, changed, run in results:
        assert changed, name
        assert run.ok, (name, run.reason)
