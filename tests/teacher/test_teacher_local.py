"""fastdistill.teacher with a tiny local teacher: exact log-probs, top-k, batching, cache, GKD, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fastdistill.data import load_supervised_dataset
from fastdistill.data.collators import completion_token_ids
from fastdistill.teacher import AnnotationError, LocalTeacher, TokenizerMismatchError, annotate
from fastdistill.testing import tiny_causal_lm, tiny_tokenizer
from helpers import gkd_config, tiny_teacher

# rows of different lengths, so batches need padding
ROWS = [
    {
        "prompt": f"Write a pytest test for add({i}, {i + 1})." + " Be thorough." * (i % 3),
        "completion": f"def test_add():\n    assert add({i}, {i + 1}) == {2 * i + 1}" + "\n    assert True" * (i % 4),
    }
    for i in range(7)
]


@pytest.fixture(scope="module")
def teacher_and_tok():
    return tiny_teacher()  # a peaked distribution makes top-k and log-prob checks meaningful


def reference(teacher, tok, prompt, completion, top_k=0):
    """The teacher's own log_softmax at the completion tokens, one unpadded sequence at a time."""
    prompt_ids, completion_ids = completion_token_ids(tok, prompt, completion)
    with torch.no_grad():
        logits = teacher(torch.tensor([prompt_ids + completion_ids])).logits[0]
    logprobs = torch.log_softmax(logits[len(prompt_ids) - 1 : -1].float(), -1)
    chosen = logprobs.gather(1, torch.tensor(completion_ids)[:, None])[:, 0]
    values, ids = logprobs.topk(top_k, dim=-1) if top_k else (None, None)
    return chosen, values, ids


def assert_matches_reference(teacher, tok, ds, top_k):
    for row in ds:
        chosen, values, ids = reference(teacher, tok, row["prompt"], row["completion"], top_k)
        got = torch.tensor(row["teacher_logprobs"])
        assert got.shape == chosen.shape
        torch.testing.assert_close(got, chosen, atol=1e-5, rtol=0)
        if top_k:
            assert row["teacher_topk_ids"] == ids.tolist()
            torch.testing.assert_close(torch.tensor(row["teacher_topk_logprobs"]), values, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "strings"])
def test_logprobs_and_topk_equal_teachers_log_softmax(teacher_and_tok, chat):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS) if chat else load_supervised_dataset(ROWS).from_list(ROWS)
    out, report = annotate(
        ds,
        teacher,
        tokenizer=tok,
        completion_column="completion",
        top_k=5,
        batch_size=3,
        return_report=True,
        progress=False,
    )
    assert len(out) == len(ROWS) and out["prompt"] == ds["prompt"]  # input order kept
    assert_matches_reference(teacher, tok, out, top_k=5)
    assert report.requests == len(ROWS) and report.tokens == sum(len(x) for x in out["teacher_logprobs"])
    # batched + padded equals one row at a time
    single = annotate(ds, teacher, tokenizer=tok, completion_column="completion", top_k=5, batch_size=1, progress=False)
    for a, b in zip(out, single):
        torch.testing.assert_close(
            torch.tensor(a["teacher_logprobs"]), torch.tensor(b["teacher_logprobs"]), atol=1e-5, rtol=0
        )
        assert a["teacher_topk_ids"] == b["teacher_topk_ids"]


def test_one_forward_per_batch_of_similar_lengths(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS)
    widths = []
    handle = teacher.register_forward_hook(
        lambda module, args, kwargs, out: widths.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        annotate(ds, teacher, tokenizer=tok, completion_column="completion", batch_size=3, progress=False)
    finally:
        handle.remove()
    assert [w[0] for w in widths] == [3, 3, 1]
    lengths = sorted(sum(map(len, completion_token_ids(tok, r["prompt"], r["completion"]))) for r in ds)
    # sorted by length: each batch is as wide as its longest member, in increasing order
    assert [w[1] for w in widths] == [lengths[2], lengths[5], lengths[6]]


def test_annotated_dataset_trains_gkd_teacher_free(tmp_path, teacher_and_tok):
    from fastdistill import GKDTrainer

    teacher, tok = teacher_and_tok
    student, _ = tiny_causal_lm(seed=0, tokenizer=tok, hidden_size=32, intermediate_size=64)
    ds = annotate(
        load_supervised_dataset(ROWS),
        teacher,
        tokenizer=tok,
        student_tokenizer=tok,
        completion_column="completion",
        top_k=4,
        progress=False,
    )
    args = gkd_config(tmp_path, max_steps=6, learning_rate=1e-2, max_length=128)
    trainer = GKDTrainer(model=student, args=args, train_dataset=ds, processing_class=tok)
    assert trainer.teacher_model is None
    trainer.train()
    rkl = [h["loss/rkl"] for h in trainer.state.log_history if "loss/rkl" in h]
    assert len(rkl) == 6 and all(math.isfinite(x) for x in rkl)
    assert sum(rkl[-2:]) < sum(rkl[:2])


def test_sampling_adds_completions_with_aligned_logprobs(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS[:3]).from_list([{"prompt": r["prompt"]} for r in ROWS[:3]])
    out, report = annotate(
        ds,
        teacher,
        tokenizer=tok,
        num_samples=2,
        max_new_tokens=10,
        temperature=1.0,
        seed=0,
        top_k=3,
        return_report=True,
        progress=False,
    )
    assert len(out) == 6 and out["teacher_sample_index"] == [0, 1] * 3
    assert out["prompt"] == [r["prompt"] for r in ROWS[:3] for _ in range(2)]
    for row in out:
        assert isinstance(row["completion"], str)
        assert 1 <= len(row["teacher_sample_logprobs"]) <= 10
        assert all(x <= 0 for x in row["teacher_sample_logprobs"])
    assert_matches_reference(teacher, tok, out, top_k=3)
    # greedy sampling: the generated tokens' log-probs are the teacher's own
    greedy = annotate(ds.select([0]), LocalTeacher(teacher, tok), max_new_tokens=6, temperature=0, progress=False)[0]
    prompt_ids = tok(greedy["prompt"], add_special_tokens=False)["input_ids"]
    ids = list(prompt_ids)
    for logprob in greedy["teacher_sample_logprobs"]:
        with torch.no_grad():
            step = torch.log_softmax(teacher(torch.tensor([ids])).logits[0, -1], -1)
        assert logprob == pytest.approx(step.max().item(), abs=1e-4)
        ids.append(int(step.argmax()))


def test_cache_resumes_without_recomputing(tmp_path, teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS)
    first, r1 = annotate(
        ds.select(range(4)),
        teacher,
        tokenizer=tok,
        completion_column="completion",
        cache_dir=tmp_path,
        return_report=True,
        progress=False,
    )
    assert r1.requests == 4 and r1.rows_cached == 0
    lines = (tmp_path / "annotations.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # simulate a crash in the middle of writing a fifth record
    with open(tmp_path / "annotations.jsonl", "a") as handle:
        handle.write(lines[0][: len(lines[0]) // 2])
    calls = []
    handle = teacher.register_forward_hook(lambda m, a, k, o: calls.append(k["input_ids"].shape[0]), with_kwargs=True)
    try:
        full, r2 = annotate(
            ds,
            teacher,
            tokenizer=tok,
            completion_column="completion",
            cache_dir=tmp_path,
            return_report=True,
            progress=False,
        )
    finally:
        handle.remove()
    assert r2.rows_cached == 4 and r2.requests == 3 and sum(calls) == 3  # only the 3 new rows went to the teacher
    assert full["teacher_logprobs"][:4] == first["teacher_logprobs"]
    keys = [json.loads(line)["key"] for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    assert len(keys) == 7 and len(set(keys)) == 7
    # different parameters are a different cache entry
    _, r3 = annotate(
        ds,
        teacher,
        tokenizer=tok,
        completion_column="completion",
        top_k=2,
        cache_dir=tmp_path,
        return_report=True,
        progress=False,
    )
    assert r3.requests == 7


def test_clear_errors(teacher_and_tok):
    teacher, tok = teacher_and_tok
    ds = load_supervised_dataset(ROWS[:2])
    other = tiny_tokenizer(vocab_size=300)
    with pytest.raises(TokenizerMismatchError, match="student and teacher tokenizers differ"):
        annotate(ds, teacher, tokenizer=tok, student_tokenizer=other, completion_column="completion", progress=False)
    with pytest.raises(ValueError, match="column 'answer' is not in the dataset"):
        annotate(ds, teacher, tokenizer=tok, completion_column="answer", progress=False)
    bad = ds.from_list([{"prompt": "ok", "completion": "x"}, {"prompt": "", "completion": "x"}])
    with pytest.raises(ValueError, match="row 1: 'prompt' must be a non-empty string"):
        annotate(bad, teacher, tokenizer=tok, completion_column="completion", progress=False)
    mixed = ds.from_list(
        [
            {"prompt": "ok", "completion": "a"},
            {"prompt": "ok", "completion": "a long completion that the broken teacher refuses"},
        ]
    )

    class Broken(LocalTeacher):
        def _score_batch(self, batch, top_k):
            if any(len(r["completion_ids"]) > 5 for r in batch):
                raise RuntimeError("out of memory")
            return super()._score_batch(batch, top_k)

    with pytest.raises(AnnotationError, match="row 1: RuntimeError: out of memory"):
        annotate(mixed, Broken(teacher, tok), completion_column="completion", batch_size=1, progress=False)
    out, report = annotate(
        mixed,
        Broken(teacher, tok),
        completion_column="completion",
        batch_size=1,
        on_error="skip",
        return_report=True,
        progress=False,
    )
    assert len(out) == 1 and report.failures == [{"row": 1, "reason": "RuntimeError: out of memory"}]


def test_cli_end_to_end(tmp_path, capsys):
    from fastdistill.cli import main
    from fastdistill.testing import save_tiny_causal_lm

    save_tiny_causal_lm(tmp_path / "teacher", seed=1)
    with open(tmp_path / "data.jsonl", "w") as handle:
        for row in ROWS[:4]:
            handle.write(json.dumps(row) + "\n")
    (tmp_path / "annotate.yaml").write_text(
        "input: {path: data.jsonl}\noutput: {path: out/annotated.jsonl}\nteacher: {model: teacher}\n"
        "student_tokenizer: teacher\ncompletion_column: completion\ntop_k: 2\nbatch_size: 2\ncache_dir: cache\n"
    )
    assert main(["annotate", "--config", str(tmp_path / "annotate.yaml"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "rows out       4" in printed and "tokens/s" in printed and "failures       0" in printed
    rows = [json.loads(line) for line in (tmp_path / "out" / "annotated.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(len(r["teacher_topk_ids"][0]) == 2 for r in rows)
    teacher, tok = LocalTeacher(str(tmp_path / "teacher")).model, LocalTeacher(str(tmp_path / "teacher")).tokenizer
    for row in rows:
        chosen, _, _ = reference(teacher, tok, row["prompt"], row["completion"])
        torch.testing.assert_close(torch.tensor(row["teacher_logprobs"]), chosen, atol=1e-5, rtol=0)
    summary = json.loads((tmp_path / "out" / "annotated.jsonl.summary.json").read_text())
    assert summary["rows_out"] == 4 and summary["tokens"] == sum(len(r["teacher_logprobs"]) for r in rows)
    # rerun: everything comes from the cache
    assert main(["annotate", "--config", str(tmp_path / "annotate.yaml"), "--no-progress"]) == 0
    assert "(4 from cache)" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text(
        "input: {path: nope.jsonl}\noutput: {path: o.jsonl}\nteacher: {model: teacher}\n"
    )
    assert main(["annotate", "--config", str(tmp_path / "bad.yaml")]) == 2
    assert "input.path" in capsys.readouterr().err
