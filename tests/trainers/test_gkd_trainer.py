import warnings

import pytest
import torch

from fastdistill import GKDTrainer
from helpers import ROWS, dataset, gkd_config, student_and_teacher, teacher_logprob_columns

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from trl.experimental.gkd import GKDTrainer as TRLGKDTrainer


def losses(trainer, key="loss"):
    return [h[key] for h in trainer.state.log_history if key in h]


def test_default_loss_is_trls_gkd_loss(tmp_path):
    student, teacher, tok = student_and_teacher()
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=gkd_config(tmp_path), train_dataset=dataset(),
                         processing_class=tok)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    for num_items in (None, 17):
        ours = trainer.compute_loss(trainer.model, batch, num_items_in_batch=num_items)
        theirs = TRLGKDTrainer.compute_loss(trainer, trainer.model, batch, num_items_in_batch=num_items)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    assert ours.item() > 0.01  # a sharp teacher makes the comparison meaningful


def test_live_teacher_loss_goes_down_and_terms_are_logged(tmp_path):
    student, teacher, tok = student_and_teacher()
    args = gkd_config(tmp_path, ce_lambda=0.5, jsd_lambda=1.0, rkl_lambda=0.25)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(), processing_class=tok)
    trainer.train()
    history = losses(trainer)
    assert len(history) == 30 and sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5
    for term in ("loss/ce", "loss/jsd", "loss/rkl"):
        values = losses(trainer, term)
        assert len(values) == 30 and values[-1] < values[0]
    first = trainer.state.log_history[0]
    expected = 0.5 * first["loss/ce"] + first["loss/jsd"] + 0.25 * first["loss/rkl"]
    assert first["loss"] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("top_k", [0, 4])
def test_teacher_free_training_from_logprob_columns(tmp_path, top_k):
    student, teacher, tok = student_and_teacher()
    ds = teacher_logprob_columns(teacher, tok, dataset(), top_k=top_k)
    trainer = GKDTrainer(model=student, args=gkd_config(tmp_path, learning_rate=1e-2), train_dataset=ds,
                         processing_class=tok)
    assert trainer.teacher_model is None and trainer.rkl_lambda == 1.0 and trainer.jsd_lambda == 0.0
    trainer.train()
    history = losses(trainer, "loss/rkl")
    assert len(history) == 30 and sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5


def test_on_policy_and_seq_kd_still_work(tmp_path):
    student, teacher, tok = student_and_teacher()
    for overrides in ({"lmbda": 1.0}, {"lmbda": 0.0, "seq_kd": True}):
        args = gkd_config(tmp_path, max_steps=2, max_new_tokens=8, **overrides)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(),
                             processing_class=tok)
        before = trainer.model.lm_head.weight.detach().clone()
        trainer.train()
        assert len(losses(trainer)) == 2
        assert not torch.equal(before, trainer.model.lm_head.weight)


@pytest.mark.parametrize("overrides", [{"lmbda": 1.0}, {"lmbda": 0.0, "seq_kd": True}])
def test_generated_batches_are_normalised_by_their_own_tokens(tmp_path, overrides):
    """The Trainer counts num_items_in_batch on the collated labels; a generated batch must use its own."""
    from fastdistill.losses import jsd_loss

    student, teacher, tok = student_and_teacher()
    args = gkd_config(tmp_path, max_steps=1, max_new_tokens=6, **overrides)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(), processing_class=tok)
    generate = trainer.generate_on_policy_outputs
    expected = []

    def generate_and_reference(model, inputs, generation_config):
        ids, attention, labels = generate(model, inputs, generation_config)
        with torch.no_grad():
            s = trainer.model(input_ids=ids, attention_mask=attention).logits[:, :-1]
            t = trainer.teacher_model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        expected.append(float(jsd_loss(s, t, beta=trainer.beta, mask=labels[:, 1:])))  # mean over generated tokens
        return ids, attention, labels

    trainer.generate_on_policy_outputs = generate_and_reference
    trainer.train()
    assert len(expected) == 1
    assert losses(trainer, "loss/jsd")[0] == pytest.approx(expected[0], rel=1e-4)


def test_clear_errors(tmp_path):
    student, teacher, tok = student_and_teacher()
    with pytest.raises(ValueError, match="needs a teacher"):
        GKDTrainer(model=student, args=gkd_config(tmp_path), train_dataset=dataset(), processing_class=tok)
    bad = dataset([{**ROWS[0], "teacher_logprobs": [-0.5, -0.5]}, {**ROWS[1], "teacher_logprobs": [-0.5, -0.5]}])
    with pytest.raises(ValueError, match="row 0: 'teacher_logprobs' has 2 entries"):
        GKDTrainer(model=student, args=gkd_config(tmp_path), train_dataset=bad, processing_class=tok)
    good = teacher_logprob_columns(teacher, tok, dataset(ROWS[:2]))
    with pytest.raises(ValueError, match="lmbda=0"):
        GKDTrainer(model=student, args=gkd_config(tmp_path, lmbda=0.5), train_dataset=good, processing_class=tok)
    with pytest.raises(ValueError, match="needs a live teacher"):
        GKDTrainer(model=student, args=gkd_config(tmp_path, jsd_lambda=1.0), train_dataset=good, processing_class=tok)
    with pytest.raises(ValueError, match="must be >= 0"):
        gkd_config(tmp_path, ce_lambda=-1.0)


def one_step(tmp_path, fused, peft_config=None, offline=False, **overrides):
    student, teacher, tok = student_and_teacher()
    ds = teacher_logprob_columns(teacher, tok, dataset(), top_k=3) if offline else dataset()
    args = gkd_config(tmp_path, max_steps=1, fused_loss=fused, **overrides)
    trainer = GKDTrainer(model=student, teacher_model=None if offline else teacher, args=args, train_dataset=ds,
                         processing_class=tok, peft_config=peft_config)
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer, losses(trainer)[0], params


@pytest.mark.parametrize("offline", [False, True])
def test_fused_and_logit_paths_give_the_same_step(tmp_path, offline):
    extra = {} if offline else {"ce_lambda": 0.5, "rkl_lambda": 0.25}
    fused, loss_f, params_f = one_step(tmp_path, True, offline=offline, **extra)
    plain, loss_p, params_p = one_step(tmp_path, False, offline=offline, **extra)
    assert fused.use_fused_loss and not plain.use_fused_loss
    assert loss_f == pytest.approx(loss_p, rel=1e-5)
    for name, value in params_f.items():
        torch.testing.assert_close(value, params_p[name], atol=1e-5, rtol=1e-4)  # fp32 round-off through Adam


def test_fused_path_with_lora_computes_no_head_gradient(tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    student, teacher, tok = student_and_teacher()
    args = gkd_config(tmp_path, max_steps=1)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(),
                         processing_class=tok, peft_config=lora)
    assert trainer.use_fused_loss
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    trainer.compute_loss(trainer.model, batch).backward()
    head = trainer.model.get_output_embeddings()
    assert head.weight.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_unfusable_head_falls_back_with_one_warning(tmp_path, caplog):
    student, teacher, tok = student_and_teacher()
    teacher.config.final_logit_softcapping = 30.0
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=gkd_config(tmp_path, max_steps=2),
                         train_dataset=dataset(), processing_class=tok)
    with caplog.at_level("WARNING", logger="fastdistill.trainers.gkd"):
        trainer.train()
    assert not trainer.use_fused_loss
    warnings_ = [r for r in caplog.records if "falling back to the logits path" in r.getMessage()]
    assert len(warnings_) == 1 and "final_logit_softcapping" in warnings_[0].getMessage()


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    # rows of different lengths, so a per-micro-batch mean would not equal the full-batch token mean
    rows = [{"prompt": ROWS[i]["prompt"], "completion": ROWS[i]["completion"] + " # pad" * (3 * i)} for i in range(4)]
    results = []
    for batch_size, accumulation in ((4, 1), (2, 2)):
        student, teacher, tok = student_and_teacher()
        args = gkd_config(tmp_path, max_steps=1, per_device_train_batch_size=batch_size,
                      gradient_accumulation_steps=accumulation, ce_lambda=1.0, optim="sgd", learning_rate=1.0)
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(rows),
                             processing_class=tok)
        trainer.train()
        assert trainer.use_fused_loss
        results.append(trainer.model.lm_head.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], atol=1e-6, rtol=1e-4)
