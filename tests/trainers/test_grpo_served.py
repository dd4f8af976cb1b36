"""GRPO's online distillation term from a served teacher (the local vLLM-shaped server)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from served_fixtures import teacher_server  # noqa: F401

from fastdistill import GRPOConfig, GRPOTrainer
from fastdistill.losses import reverse_kl_on_logits
from fastdistill.testing import tiny_causal_lm
from fastdistill.testing.teacher_server import Faults


def prompts_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Write tests for f{i}"}], "code": f"def f{i}():\n    return {i}\n"}
         for i in range(n)]
    )


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def config(tmp_path, **overrides):
    kwargs = {"output_dir": str(tmp_path), "bf16": False, "max_steps": 2, "per_device_train_batch_size": 4,
              "num_generations": 4, "max_completion_length": 8, "report_to": [], "save_strategy": "no",
              "logging_steps": 1, "learning_rate": 1e-3, "seed": 0, "teacher_max_retries": 2}
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


@pytest.fixture(scope="module")
def models():
    policy, tok = tiny_causal_lm(seed=0)
    teacher, _ = tiny_causal_lm(seed=1, tokenizer=tok)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(6.0)
    return policy, teacher, tok


def generation_batch(trainer):
    batch = [trainer.train_dataset[i] for i in range(4)]
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    return trainer._generate_and_score_completions(batch)


def local_logits(model, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    k = inputs["completion_ids"].size(1)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attn).logits[:, -k - 1 : -1].float()


def test_served_reverse_kl_term_matches_in_memory_reference(models, teacher_server, tmp_path):  # noqa: F811
    policy, teacher, tok = models
    vocab = policy.config.vocab_size
    server = teacher_server(teacher, tok, max_logprobs=vocab)
    trainer = GRPOTrainer(model=policy, reward_funcs=[constant_reward], processing_class=tok,
                          train_dataset=prompts_dataset(), teacher_model=server.base_url,
                          args=config(tmp_path, jsd_lambda=0.5, teacher_top_k=vocab))
    assert trainer.teacher_model is None and trainer.served is not None
    inputs = generation_batch(trainer)
    assert inputs["teacher_row_ok"].all() and inputs["teacher_ids"].shape[:2] == inputs["completion_ids"].shape
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    assert sum(p.grad.abs().sum().item() for p in trainer.model.parameters() if p.grad is not None) > 0
    logged = trainer._metrics["train"]["teacher/rkl"][-1]
    s, t = local_logits(trainer.model, inputs), local_logits(teacher, inputs)
    expected = reverse_kl_on_logits(s, t, mask=inputs["completion_mask"].bool())
    assert logged == pytest.approx(expected.item(), rel=1e-4) and expected.item() > 0
    assert trainer._metrics["train"]["teacher/failed_rows"] == [0.0]


def test_dense_teacher_advantage(models, teacher_server, tmp_path):  # noqa: F811
    policy, teacher, tok = models
    server = teacher_server(teacher, tok, max_logprobs=4)
    trainer = GRPOTrainer(model=policy, reward_funcs=[constant_reward], processing_class=tok,
                          train_dataset=prompts_dataset(), teacher_model=server.base_url,
                          args=config(tmp_path, jsd_lambda=0.0, teacher_advantage_coef=0.5, teacher_top_k=4))
    inputs = generation_batch(trainer)
    advantages = inputs["advantages"]
    assert advantages.shape == inputs["completion_ids"].shape  # per token now
    s = torch.log_softmax(local_logits(trainer.model, inputs), -1)
    t = torch.log_softmax(local_logits(teacher, inputs), -1)
    ids = inputs["completion_ids"][..., None]
    mask = inputs["completion_mask"].bool()
    # constant reward: the group advantage is 0, so what remains is 0.5 * (log p_teacher - log p_policy) per token
    expected = torch.where(mask, 0.5 * (t.gather(-1, ids) - s.gather(-1, ids))[..., 0], torch.zeros_like(advantages))
    torch.testing.assert_close(advantages, expected, atol=1e-4, rtol=0)
    assert (advantages[mask] < 0).float().mean() > 0  # the sign: tokens the teacher finds less likely are pushed down


def test_requests_go_out_before_the_rewards_and_faults_are_counted(models, teacher_server, tmp_path):  # noqa: F811
    policy, teacher, tok = models
    sent_when_rewarded = []

    def rule(n, path, body):  # every request of the f3 prompt fails
        return "500" if "f3" in tok.decode(body.get("prompt") or []) else None

    server = teacher_server(teacher, tok, faults=Faults(rates={"500": 0.1, "malformed": 0.05}, seed=2, rule=rule))

    def slow_reward(prompts, completions, **kwargs):  # stands in for the test sandbox
        pending = trainer._served_pending  # the step's requests, already submitted to the server
        sent_when_rewarded.append(len(pending[0].futures) if pending is not None else 0)
        return [float(len(c[0]["content"])) / 10 for c in completions]

    trainer = GRPOTrainer(model=policy, reward_funcs=[slow_reward], processing_class=tok,
                          train_dataset=prompts_dataset(),
                          args=config(tmp_path, jsd_lambda=0.5, teacher_top_k=4, teacher_advantage_coef=0.1,
                                      # 2 prompts per batch: the f3 rows are half of theirs
                                      max_steps=4, num_generations=2,
                                      teacher_model_name_or_path=server.base_url, teacher_max_failed_fraction=0.5))
    trainer.served.teacher.backoff = trainer.served.backoff = 0.01
    trainer.train()
    # each generation batch's 4 requests were in flight when its rewards were computed
    assert sent_when_rewarded == [4] * 4
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4 and all("teacher/failed_rows" in h for h in logs)
    failed = sum(h["teacher/failed_rows"] for h in logs)
    assert failed == trainer.served.rows_failed > 0  # the f3 rows, left out and counted
    assert all("teacher/rkl" in h for h in logs)
