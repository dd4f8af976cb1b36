"""fastdistill.evaluation: scoring on reference "models" (stand-in completions), generation, CLI."""

import json
import statistics

import pytest

from fastdistill.data.examples import split_examples
from fastdistill.evaluation import (
    GenerationSettings,
    evaluate_mutation,
    evaluate_speed,
    generate,
    prepare_rows,
    read_jsonl,
    score_mutation,
    score_speed,
    write_jsonl,
)
from fastdistill.evaluation.cli import main as eval_main

EXAMPLES = split_examples()[1][:3]  # three held-out examples


def stand_in(completions):
    """Rows as `generate` returns them, with the completions of a pretend model."""
    rows = prepare_rows(EXAMPLES)
    return [{**row, "sample": 0, "completion": c} for row, c in zip(rows, completions)]


REFERENCE = stand_in([f"```python\n{ex['tests']}```" for ex in EXAMPLES])
GARBAGE = stand_in(["zz qq !!", "def nothing(:\n", "import os\n"])


def test_reference_tests_kill_mutants_and_headline_is_the_mean_of_rows():
    result = score_mutation(REFERENCE, n_workers=2, progress=False)
    assert result["n"] == 3 and len(result["rows"]) == 3
    assert result["pass_rate"] == 1.0 and result["extract_rate"] == 1.0
    assert result["kill_rate"] > 0.7
    assert result["kill_rate"] == pytest.approx(statistics.fmean(r["kill_rate"] for r in result["rows"]))
    for row, ex in zip(result["rows"], EXAMPLES):
        assert row["name"] == ex["name"] and row["passed"] and row["total"] > 0
        assert row["kill_rate"] == pytest.approx(row["killed"] / row["total"])


def test_garbage_scores_zero_and_never_raises():
    result = score_mutation(GARBAGE, n_workers=2, progress=False)
    assert result["kill_rate"] == 0.0 and result["pass_rate"] == 0.0
    assert [r["extracted"] for r in result["rows"]] == [False, False, False]
    speed = score_speed(GARBAGE, repeats=2, progress=False)
    assert speed["runtime_s"] is None and speed["n_timed"] == 0 and speed["stable_rate"] == 0.0


def test_tests_that_fail_on_the_code_score_zero():
    name = EXAMPLES[0]["name"]
    code = EXAMPLES[0]["code"]
    func = code.split("def ", 1)[1].split("(", 1)[0]
    wrong = stand_in([f"from solution import {func}\n\ndef test_wrong():\n    assert {func} is None\n"] * 3)[:1]
    result = score_mutation(wrong, progress=False)
    assert result["rows"][0]["name"] == name
    assert result["rows"][0]["passed"] is False and result["kill_rate"] == 0.0
    assert "fail" in result["rows"][0]["reason"]
    speed = score_speed(wrong, repeats=2, progress=False)  # failing tests ran, but have no headline runtime
    assert speed["n_ran"] == 1 and speed["n_timed"] == 0 and speed["runtime_s"] is None
    assert speed["runtime_all_s"] > 0 and speed["rows"][0]["passed"] is False


def test_speed_on_reference_tests():
    result = score_speed(REFERENCE, repeats=3, n_workers=2, progress=False)
    assert result["n_timed"] == 3 and result["stable_rate"] == 1.0
    assert result["runtime_s"] > 0
    assert result["runtime_s"] == pytest.approx(statistics.fmean(r["runtime_s"] for r in result["rows"]))
    for row in result["rows"]:
        assert len(row["repeat_durations_s"]) == 3
        assert row["runtime_s"] == pytest.approx(statistics.fmean(row["repeat_durations_s"]))
        assert row["cv"] >= 0


def test_evaluate_accepts_generation_files(tmp_path):
    path = write_jsonl(REFERENCE, tmp_path / "gen.jsonl")
    assert read_jsonl(path)[0]["completion"] == REFERENCE[0]["completion"]
    assert evaluate_mutation(generations=path, progress=False)["kill_rate"] > 0.7
    assert evaluate_speed(generations=path, repeats=1, progress=False)["n_timed"] == 3
    with pytest.raises(ValueError, match="model"):
        evaluate_mutation(None, EXAMPLES)


@pytest.fixture(scope="module")
def tiny():
    from fastdistill.testing import tiny_causal_lm

    return tiny_causal_lm(seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1)


def test_generate_batched_deterministic_and_written(tiny, tmp_path):
    model, tok = tiny
    model.train()
    tok.padding_side = "right"
    out = tmp_path / "gen.jsonl"
    kwargs = dict(tokenizer=tok, max_new_tokens=8, temperature=0.9, num_samples=2, batch_size=4, progress=False)
    rows = generate(model, EXAMPLES, out, seed=3, **kwargs)
    assert len(rows) == 6 and [r["sample"] for r in rows] == [0, 1] * 3
    assert [r["name"] for r in rows[::2]] == [ex["name"] for ex in EXAMPLES]
    assert read_jsonl(out) == json.loads(json.dumps(rows))
    again = generate(model, EXAMPLES, seed=3, **kwargs)
    assert [r["completion"] for r in again] == [r["completion"] for r in rows]
    assert tok.padding_side == "right" and model.training  # restored after generating
    # greedy decoding of a batch equals decoding each prompt alone (left padding is correct)
    greedy = generate(model, EXAMPLES, tokenizer=tok, max_new_tokens=6, batch_size=3, progress=False)
    alone = [generate(model, [ex], tokenizer=tok, max_new_tokens=6, progress=False)[0] for ex in EXAMPLES]
    assert [r["completion"] for r in greedy] == [r["completion"] for r in alone]
    # a random model writes no tests: everything scores zero
    scored = evaluate_mutation(model, EXAMPLES[:1], tokenizer=tok, generation_kwargs={"max_new_tokens": 8,
                               "progress": False}, progress=False)
    assert scored["kill_rate"] == 0.0 and scored["n"] == 1


def test_settings_and_rows_are_validated():
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(num_samples=2)
    with pytest.raises(ValueError, match="code"):
        prepare_rows([{"name": "x"}])
    with pytest.raises(ValueError, match="empty"):
        prepare_rows([])
    rows = prepare_rows([{"code": "def f():\n    return 1\n"}])
    assert rows[0]["prompt"][-1]["role"] == "user" and "def f()" in rows[0]["prompt"][-1]["content"]


def test_cli_generate_and_eval(tmp_path, capsys):
    from fastdistill.testing import save_tiny_causal_lm

    model_dir = save_tiny_causal_lm(tmp_path / "m", hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    data = write_jsonl([{"name": ex["name"], "code": ex["code"]} for ex in EXAMPLES[:2]], tmp_path / "data.jsonl")
    gen = tmp_path / "gen.jsonl"
    assert eval_main(["--model", model_dir, "--dataset", data, "--out", str(gen), "--max-new-tokens", "4"],
                     command="generate") == 0
    assert len(read_jsonl(gen)) == 2
    ref = write_jsonl(REFERENCE, tmp_path / "ref.jsonl")
    out = tmp_path / "eval.json"
    assert eval_main(["--generations", str(ref), "--repeats", "2", "--out", str(out)], command="eval") == 0
    text = capsys.readouterr().out
    printed = json.loads(text[text.index("{\n"):])  # (libraries may log a line to stdout first)
    saved = json.loads(out.read_text())
    assert printed["mutation"]["kill_rate"] == saved["mutation"]["kill_rate"] > 0.7
    assert len(saved["speed"]["rows"]) == 3
    assert eval_main(["--generations", str(tmp_path / "missing.jsonl")], command="eval") == 2
