import json

import pytest
import torch

from fastdistill.data import TEMPLATES, generate_tests_prompt, load_supervised_dataset
from fastdistill.data.collators import DistillationCollator, completion_token_ids, tokenize_example
from fastdistill.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_loads_jsonl_json_and_rows_into_prompt_completion(tmp_path):
    rows = [{"prompt": "p0", "chosen": "c0", "code": "x = 1"}, {"prompt": "p1", "chosen": "c1", "code": "y = 2"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for source in (tmp_path / "d.jsonl", str(tmp_path / "d.json"), rows):
        ds = load_supervised_dataset(source)
        assert ds.column_names == ["prompt", "code", "completion"]
        assert ds[1]["prompt"] == [{"role": "user", "content": "p1"}]
        assert ds[1]["completion"] == [{"role": "assistant", "content": "c1"}]
        assert ds[0]["code"] == "x = 1"


def test_messages_rows_are_split():
    ds = load_supervised_dataset(
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    assert ds[0]["prompt"][-1]["content"] == "q" and ds[0]["completion"][0]["content"] == "a"


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"prompt": "p", "chosen": "c"}, {"chosen": "c"}], "row 1: missing field 'prompt'"),
        ([{"prompt": "p"}], "row 0: missing the answer"),
        ([{"prompt": "", "response": "c"}], "row 0, field 'prompt' is empty"),
        ([{"prompt": "p", "chosen": "c", "teacher_logprobs": [-0.1, 0.5]}], "row 0, field 'teacher_logprobs'"),
        ([{"prompt": "p", "chosen": "c", "teacher_logprobs": "x"}], "row 0, field 'teacher_logprobs'"),
        ([{"prompt": "p", "chosen": "c", "teacher_topk_ids": [[1]]}], "must be given together"),
        (
            [{"prompt": "p", "chosen": "c", "teacher_topk_ids": [[1, 2]], "teacher_topk_logprobs": [[-0.1]]}],
            "same [tokens][k] shape",
        ),
    ],
)
def test_bad_rows_raise_clear_errors(rows, message):
    with pytest.raises(ValueError) as err:
        load_supervised_dataset(rows)
    assert message in str(err.value)


def test_bad_json_line_is_named(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "chosen": "b"}\n{oops\n')
    with pytest.raises(ValueError, match="line 2"):
        load_supervised_dataset(tmp_path / "bad.jsonl")


def test_templates_are_chat_messages():
    assert set(TEMPLATES) == {"generate_tests", "fix_tests", "diagnose_failure"}
    msgs = generate_tests_prompt("def f(): return 1", module_name="mod")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "from mod import" in msgs[-1]["content"] and "def f(): return 1" in msgs[-1]["content"]
    for name in ("fix_tests", "diagnose_failure"):
        content = TEMPLATES[name]("def f(): pass", "def test_f(): assert 0", "AssertionError")[-1]["content"]
        assert "AssertionError" in content and "def test_f" in content


def test_collator_aligns_teacher_logprobs_with_labels(tok):
    rows = load_supervised_dataset([{"prompt": "short", "chosen": "abc"}, {"prompt": "a longer prompt", "chosen": "x"}])
    examples = []
    for row in rows:
        _, completion = completion_token_ids(tok, row["prompt"], row["completion"])
        # encode the token position into the log-prob so alignment is checkable
        row = {**row, "teacher_logprobs": [-(j + 1) / 10 for j in range(len(completion))]}
        examples.append({**row, **tokenize_example(row, tok)})
    batch = DistillationCollator(tok)(examples)
    labels, lps = batch["labels"], batch["teacher_logprobs"]
    for b, ex in enumerate(examples):
        positions = (labels[b] != -100).nonzero().squeeze(-1)
        assert labels[b, positions].tolist() == ex["completion_ids"]
        assert torch.allclose(lps[b, positions], torch.tensor(ex["teacher_logprobs"]))
        assert int(batch["prompt_attention_mask"][b].sum()) == len(ex["prompt_ids"])
        assert batch["prompts"][b, -len(ex["prompt_ids"]):].tolist() == ex["prompt_ids"]  # left-padded


def test_mismatched_teacher_logprobs_length_names_the_row(tok):
    row = load_supervised_dataset([{"prompt": "p", "chosen": "abc", "teacher_logprobs": [-0.1]}])[0]
    with pytest.raises(ValueError, match=r"row 7: 'teacher_logprobs' has 1 entries but the completion has \d+ tokens"):
        tokenize_example(row, tok, index=7)


def test_truncation_keeps_teacher_columns_aligned(tok):
    row = load_supervised_dataset([{"prompt": "p", "chosen": "a b c d e f g h"}])[0]
    prompt_ids, completion = completion_token_ids(tok, row["prompt"], row["completion"])
    row["teacher_logprobs"] = [-float(j) for j in range(len(completion))]
    out = tokenize_example(row, tok, max_length=len(prompt_ids) + 3)
    assert out["completion_ids"] == completion[:3] and out["teacher_logprobs"] == [0.0, -1.0, -2.0]


@pytest.mark.parametrize("completion", ["\n\ndef test_f():\n    assert f() == 1", "def test_f():\n    assert f() == 1"])
def test_chat_completion_tokens_cover_exactly_the_completion_text(tok, completion):
    """A completion starting with newlines merges with the template's newline under BPE; it must still split."""
    prompt = [{"role": "user", "content": "Write tests."}]
    prompt_ids, completion_ids = completion_token_ids(tok, prompt, completion)
    prompt_text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tok.apply_chat_template(prompt + [{"role": "assistant", "content": completion}], tokenize=False)
    assert tok.decode(prompt_ids) == prompt_text
    assert tok.decode(completion_ids) == full_text[len(prompt_text):]
    assert completion in tok.decode(completion_ids)
