"""Bundled examples: enough, well-formed, deterministic split, datasets helper."""

import ast

from fastdistill.data.examples import examples_dataset, load_examples, split_examples


def test_at_least_forty_wellformed_examples():
    examples = load_examples()
    assert len(examples) >= 40
    assert len({e["name"] for e in examples}) == len(examples)
    for e in examples:
        assert e["module_name"] == "solution"
        ast.parse(e["code"])
        tree = ast.parse(e["tests"])
        assert any(isinstance(n, ast.ImportFrom) and n.module == "solution" for n in ast.walk(tree)), e["name"]
        assert any(isinstance(n, ast.FunctionDef) and n.name.startswith("test") for n in ast.walk(tree))
        assert e["code"] in e["prompt"]


def test_split_is_deterministic_and_disjoint():
    train, held = split_examples(0.25, seed=0)
    train2, held2 = split_examples(0.25, seed=0)
    assert [e["name"] for e in held] == [e["name"] for e in held2]
    assert not {e["name"] for e in train} & {e["name"] for e in held}
    assert len(train) + len(held) == len(load_examples())
    assert len(held) == round(0.25 * len(load_examples()))
    assert {e["name"] for e in split_examples(0.25, seed=1)[1]} != {e["name"] for e in held}


def test_dataset_helper():
    ds = examples_dataset("held_out")
    assert set(ds.column_names) >= {"name", "code", "tests", "module_name", "prompt"}
    assert len(ds) == len(split_examples()[1])
