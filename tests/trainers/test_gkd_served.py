"""GKD with a served teacher (the local vLLM-shaped server): exactness, faults, no teacher weights in memory."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import dataset, student_and_teacher
from served_fixtures import teacher_server  # noqa: F401

from fastdistill import GKDConfig, GKDTrainer
from fastdistill.teacher import OpenAIServerTeacher, TeacherFailureError
from fastdistill.testing.teacher_server import Faults


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
