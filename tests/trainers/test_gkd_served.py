"""GKD with a served teacher (the local vLLM-shaped server): exactness, faults, no teacher weights in memory."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import dataset, student_and_teacher
from served_fixtures import teacher_server  # noqa: F401

from fastdistill import GKDConfig, GKDTrainer
from fastdistill.teacher import OpenAIServerTeacher, TeacherFailureError
from fastdistill.testing.teacher_server import Faults, sample_tokens


@pytest.fixture(scope="module")
def models():
    return student_and_teacher()


def config(tmp_path, **kwargs):
    base = {"output_dir": str(tmp_path), "bf16": False, "report_to": "none", "per_device_train_batch_size": 2,
            "max_new_tokens": 6, "logging_steps": 1, "save_strategy": "no", "teacher_max_retries": 2,
            "disable_dropout": True}
    base.update(kwargs)
    return GKDConfig(**base)


def fast_retries(trainer):
    trainer.served.teacher.backoff = trainer.served.backoff = 0.01
    return trainer


def loss_and_grads(trainer, inputs):
    model = trainer.model
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(inputs))
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
def test_full_vocabulary_top_k_equals_in_memory_teacher(models, teacher_server, tmp_path, beta):  # noqa: F811
    """teacher_top_k = vocabulary size: the partition is the whole vocabulary, so the served loss is the in-memory
    teacher's full-vocabulary loss (CE + JSD_beta + reverse KL), values and gradients."""
    student, teacher, tok = models
    vocab = student.config.vocab_size
    server = teacher_server(teacher, tok, max_logprobs=vocab)
    weights = {"ce_lambda": 0.3, "jsd_lambda": 1.0, "rkl_lambda": 0.7, "beta": beta, "lmbda": 0.0}
    here = GKDTrainer(model=copy.deepcopy(student), teacher_model=teacher, processing_class=tok,
                      train_dataset=dataset(), args=config(tmp_path / "a", fused_loss=False, **weights))
    there = GKDTrainer(model=copy.deepcopy(student), teacher_model=server.base_url, processing_class=tok,
                       train_dataset=dataset(), args=config(tmp_path / "b", teacher_top_k=vocab, **weights))
    assert there.teacher_model is None and there.served is not None
    inputs = here.data_collator([here.train_dataset[i] for i in range(4)])
    loss_a, grads_a = loss_and_grads(here, inputs)
    loss_b, grads_b = loss_and_grads(there, inputs)
    assert server.log[-1][1]["prompt_logprobs"] == vocab
    torch.testing.assert_close(loss_b, loss_a, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-5, rtol=0, msg=name)
    for name in ("jsd", "rkl", "ce"):  # and term by term
        torch.testing.assert_close(torch.tensor(there._metrics["train"][f"loss/{name}"]),
                                   torch.tensor(here._metrics["train"][f"loss/{name}"]), atol=1e-5, rtol=0)


def test_small_top_k_is_a_lower_bound_that_trains(models, teacher_server, tmp_path):  # noqa: F811
    student, teacher, tok = models
    server = teacher_server(teacher, tok, max_logprobs=20)
    here = GKDTrainer(model=copy.deepcopy(student), teacher_model=teacher, processing_class=tok,
                      train_dataset=dataset(),
                      args=config(tmp_path / "a", fused_loss=False, rkl_lambda=1.0, jsd_lambda=0.0, lmbda=0.0))
    there = GKDTrainer(model=copy.deepcopy(student), teacher_model=server.base_url, processing_class=tok,
                       train_dataset=dataset(), args=config(tmp_path / "b", rkl_lambda=1.0, jsd_lambda=0.0, lmbda=0.0))
    inputs = here.data_collator([here.train_dataset[i] for i in range(4)])
    full, _ = loss_and_grads(here, inputs)
    partial, _ = loss_and_grads(there, inputs)
    assert 0 < partial.item() <= full.item() + 1e-6  # coarse-graining never increases a KL


def poison(text):
    """Fault rule: HTTP 500 for every scoring request whose tokens contain ``text``."""

    def rule(n, path, body):  # rule.tok: the tokenizer that decodes the request's token ids
        return "500" if text in rule.tok.decode(body.get("prompt") or []) else None

    return rule


def test_on_policy_training_with_faults_logs_failed_rows(models, teacher_server, tmp_path):  # noqa: F811
    student, teacher, tok = models
    rule = poison("add(0, 1)")
    rule.tok = tok
    faults = Faults(rates={"500": 0.1, "malformed": 0.05, "truncated": 0.05}, seed=1, rule=rule)
    server = teacher_server(teacher, tok, faults=faults, max_logprobs=8)
    trainer = fast_retries(GKDTrainer(
        model=copy.deepcopy(student), processing_class=tok, train_dataset=dataset(),
        args=config(tmp_path, teacher_model_name_or_path=server.base_url, teacher_top_k=8, lmbda=1.0, max_steps=4,
                    gradient_accumulation_steps=2, teacher_max_failed_fraction=0.5, rkl_lambda=0.5),
    ))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4
    assert all("teacher/failed_rows" in h and h["loss/jsd"] > 0 and h["loss/rkl"] > 0 for h in logs)
    # the prompt with add(0, 1) is in 2 of the 16 rows (2 epochs of 8): those rows failed, and only those
    assert sum(h["teacher/failed_rows"] for h in logs) == trainer.served.rows_failed == 2
    assert trainer.served.rows_scored == 14
    assert server.count(action="500") > 2 * (1 + 2)  # the poisoned rows were retried; random 500s happened too
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    # everything the server scored was the student's own sampled completion, sent as token ids
    assert all(isinstance(body["prompt"], list) for path, body, _ in server.log if path == "/v1/completions")


def test_too_many_failed_rows_stop_training(models, teacher_server, tmp_path):  # noqa: F811
    student, teacher, tok = models
    rule = poison("pytest test for add(")
    rule.tok = tok
    server = teacher_server(teacher, tok, faults=Faults(rule=rule))
    trainer = fast_retries(GKDTrainer(
        model=copy.deepcopy(student), processing_class=tok, train_dataset=dataset(),
        args=config(tmp_path, teacher_model_name_or_path=server.base_url, teacher_top_k=4, lmbda=1.0, max_steps=2),
    ))
    with pytest.raises(TeacherFailureError, match=r"127\.0\.0\.1:\d+/v1 \(teacher\) failed 2 of 2 rows.*500"):
        trainer.train()


def test_failed_row_is_left_out_not_scored_zero(models, teacher_server, tmp_path):  # noqa: F811
    student, teacher, tok = models
    rule = poison("add(1, 2)")
    rule.tok = tok
    bad = teacher_server(teacher, tok, faults=Faults(rule=rule), model_name="t")
    good = teacher_server(teacher, tok, model_name="t")
    args = {"teacher_top_k": 4, "lmbda": 0.0, "rkl_lambda": 1.0, "jsd_lambda": 0.0, "teacher_max_failed_fraction": 0.5}
    remote = OpenAIServerTeacher(bad.base_url, "t", max_retries=1, backoff=0.01)  # an instance selects it too
    a = GKDTrainer(model=copy.deepcopy(student), teacher_model=remote, processing_class=tok, train_dataset=dataset(),
                   args=config(tmp_path / "a", **args))
    b = GKDTrainer(model=copy.deepcopy(student), teacher_model=good.base_url, processing_class=tok,
                   train_dataset=dataset(), args=config(tmp_path / "b", **args))
    three = a.data_collator([a.train_dataset[i] for i in range(3)])  # row 1 fails on the bad server
    two = b.data_collator([b.train_dataset[i] for i in (0, 2)])
    loss_three, _ = loss_and_grads(a, three)
    loss_two, _ = loss_and_grads(b, two)
    assert a.served.rows_failed == 1
    torch.testing.assert_close(loss_three, loss_two, atol=1e-5, rtol=0)
    assert a._metrics["train"]["teacher/failed_rows"] == [1.0]


def teacher_sample(teacher, prompt_ids, max_tokens, temperature, eos):
    """What the local server samples for one request (seed 0): the teacher's own tokens, computed here."""

    def logprobs_of(ids):
        with torch.no_grad():
            return torch.log_softmax(teacher(torch.tensor([ids])).logits[0].float(), -1)

    generated = sample_tokens(logprobs_of, prompt_ids, max_tokens, temperature=temperature,
                              generator=torch.Generator().manual_seed(0), eos_token_id=eos)
    return [t for t, _ in generated]


def completions_of(inputs):
    return [ids[labels != -100].tolist() for ids, labels in zip(inputs["input_ids"], inputs["labels"])]


def test_seq_kd_trains_on_the_teachers_samples(models, teacher_server, tmp_path):  # noqa: F811
    """seq_kd with a served teacher: the off-policy micro-batches' completions are the teacher's samples (token
    ids from the server, the same tokens the teacher model samples), then scored like any row, and training runs."""
    student, teacher, tok = models
    server = teacher_server(teacher, tok, max_logprobs=8)
    trainer = fast_retries(GKDTrainer(
        model=copy.deepcopy(student), processing_class=tok, train_dataset=dataset(),
        args=config(tmp_path, teacher_model_name_or_path=server.base_url, teacher_top_k=8, lmbda=0.0, seq_kd=True,
                    temperature=0.9, max_steps=2, rkl_lambda=0.5),
    ))
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(collated["prompts"], collated["prompt_attention_mask"])]
    dataset_completions = completions_of(collated)
    (inputs,), _ = trainer.get_batch_samples(iter([dict(collated)]), 1, torch.device("cpu"))
    expected = [teacher_sample(teacher, p, 6, 0.9, tok.eos_token_id) for p in prompts]
    assert completions_of(inputs) == expected
    assert expected != dataset_completions
    for b, prompt in enumerate(prompts):  # the prompt is kept, left-padded, as TRL lays out generated rows
        kept = inputs["input_ids"][b, : collated["prompts"].shape[1]][collated["prompt_attention_mask"][b].bool()]
        assert kept.tolist() == prompt
    samples = [body for path, body, _ in server.log if path == "/v1/completions" and "prompt_logprobs" not in body]
    assert len(samples) == 2 and all(body["max_tokens"] == 6 and body["temperature"] == 0.9 for body in samples)
    loss = trainer.compute_loss(trainer.model, inputs)  # scored on the server like any row
    assert torch.isfinite(loss) and loss > 0
    assert trainer._metrics["train"]["teacher/failed_samples"] == [0.0]

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(h["teacher/failed_samples"] == 0 and h["loss/jsd"] > 0 for h in logs)
    assert trainer.served.rows_sampled == 2 + 2 * 2 and trainer.served.samples_failed == 0
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())


def _seq_kd_trainer_failing_on_add(models, teacher_server, tmp_path, **cfg):  # noqa: F811
    """A seq_kd trainer whose served teacher fails every sampling request for the add(1, 2) prompt."""
    student, teacher, tok = models

    def rule(n, path, body):
        sampling = "prompt_logprobs" not in body and body.get("max_tokens") == 6
        return "500" if sampling and "add(1, 2)" in tok.decode(body.get("prompt") or []) else None

    server = teacher_server(teacher, tok, faults=Faults(rule=rule), max_logprobs=4)
    trainer = fast_retries(GKDTrainer(
        model=copy.deepcopy(student), processing_class=tok, train_dataset=dataset(),
        args=config(tmp_path, teacher_model_name_or_path=server.base_url, teacher_top_k=4, lmbda=0.0, seq_kd=True,
                    **cfg),
    ))
    return trainer, server


def test_seq_kd_failed_sample_is_left_out_and_counted(models, teacher_server, tmp_path):  # noqa: F811
    trainer, server = _seq_kd_trainer_failing_on_add(models, teacher_server, tmp_path, rkl_lambda=1.0,
                                                     jsd_lambda=0.0, teacher_max_failed_fraction=0.5)
    collated = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])  # row 1 cannot be sampled
    (inputs,), _ = trainer.get_batch_samples(iter([dict(collated)]), 1, torch.device("cpu"))
    completions = completions_of(inputs)
    assert completions[1] == [] and completions[0] and completions[2]  # left out: no CE, no divergence
    assert trainer.served.samples_failed == 1 and trainer.served.rows_sampled == 2
    assert server.count(action="500") == 1 + 2  # retried, then given up
    loss = trainer.compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss) and loss > 0
    assert trainer._metrics["train"]["teacher/failed_samples"] == [1.0]
    assert trainer.served.rows_failed == 0 and trainer.served.rows_scored == 2


def test_seq_kd_failed_fraction_is_over_the_whole_step(models, teacher_server, tmp_path):  # noqa: F811
    """1 failed sample of the step's 4 (two micro-batches) is within teacher_max_failed_fraction=0.25, even though
    it is half of the first micro-batch's samples."""
    trainer, _ = _seq_kd_trainer_failing_on_add(models, teacher_server, tmp_path, teacher_max_failed_fraction=0.25)
    batches = [dict(trainer.data_collator([trainer.train_dataset[i] for i in rows])) for rows in ((0, 1), (2, 3))]
    (first, second), _ = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
    assert completions_of(first)[1] == [] and all(completions_of(second))
    assert trainer.served.samples_failed == 1 and trainer.served.rows_sampled == 3


def test_seq_kd_stops_when_the_teacher_cannot_sample(models, teacher_server, tmp_path):  # noqa: F811
    student, teacher, tok = models
    rule = lambda n, path, body: "500" if "prompt_logprobs" not in body and body.get("max_tokens") == 6 else None  # noqa: E731
    server = teacher_server(teacher, tok, faults=Faults(rule=rule), max_logprobs=4)
    trainer = fast_retries(GKDTrainer(
        model=copy.deepcopy(student), processing_class=tok, train_dataset=dataset(),
        args=config(tmp_path, teacher_model_name_or_path=server.base_url, teacher_top_k=4, lmbda=0.0, seq_kd=True,
                    max_steps=1),
    ))
    with pytest.raises(TeacherFailureError, match=r"failed 2 of 2 samples.*500"):
        trainer.train()


def test_recipe_config_names_only_known_fields():
    """recipes/configs/gkd_served_teacher.yaml parses into the recipe's dataclasses (TrlParser would refuse a typo)."""
    import dataclasses
    from pathlib import Path

    import yaml
    from trl import ModelConfig

    path = Path(__file__).resolve().parents[2] / "recipes" / "configs" / "gkd_served_teacher.yaml"
    config = yaml.safe_load(path.read_text())
    known = {f.name for cls in (GKDConfig, ModelConfig) for f in dataclasses.fields(cls)} | {
        "dataset", "examples_split", "max_train_samples"}
    assert set(config) <= known, set(config) - known
    assert config["teacher_model_name_or_path"].startswith("http") and config["teacher_top_k"] == 20
