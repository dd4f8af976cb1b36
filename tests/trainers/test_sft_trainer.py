import pytest
import torch
from peft import LoraConfig

from fastdistill import SFTConfig, SFTTrainer
from fastdistill.testing import tiny_causal_lm
from helpers import dataset


def config(tmp_path, config_class=SFTConfig, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path), bf16=False, max_steps=20, per_device_train_batch_size=4, learning_rate=3e-3,
        logging_steps=1, report_to=[], save_strategy="no", max_length=96, seed=0,
    )
    kwargs.update(overrides)
    return config_class(**kwargs)


def train_losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_sft_trains_full_model(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    trainer = SFTTrainer(model=model, args=config(tmp_path), train_dataset=dataset(), processing_class=tok)
    trainer.train()
    history = train_losses(trainer)
    assert history[-1] < 0.7 * history[0]


def test_sft_trains_lora_adapters_only(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    base = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config(tmp_path, learning_rate=2e-2), train_dataset=dataset(),
                         processing_class=tok, peft_config=lora)
    trainer.train()
    history = train_losses(trainer)
    assert history[-1] < history[0]
    peft_model = trainer.model
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    torch.testing.assert_close(peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base)


def tag_prompt(example, seed):
    return {"prompt": [{"role": "user", "content": example["prompt"][0]["content"] + f" # variant {seed}"}]}


@pytest.mark.parametrize("mode", ["replace", "append"])
def test_augmentation_hook_is_seeded_and_applied(tmp_path, mode):
    model, tok = tiny_causal_lm(seed=0)
    args = config(tmp_path, max_steps=1, augment_fn=tag_prompt, augment_probability=0.5, augment_mode=mode)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset(), processing_class=tok)
    ds = trainer.train_dataset
    flags = ds["augmented"]
    assert 0 < sum(flags) < 8 if mode == "replace" else (len(ds) > 8 and sum(flags) == len(ds) - 8)
    again = SFTTrainer(model=model, args=args, train_dataset=dataset(), processing_class=tok).train_dataset
    assert again["input_ids"] == ds["input_ids"]  # reproducible
    variant_ids = tok(" # variant", add_special_tokens=False)["input_ids"]
    def contains(ids):
        return any(ids[i : i + len(variant_ids)] == variant_ids for i in range(len(ids)))
    assert [contains(ids) for ids in ds["input_ids"]] == flags


def test_no_hook_matches_trl(tmp_path):
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer as TRLTrainer

    model, tok = tiny_causal_lm(seed=0)
    ours = SFTTrainer(model=model, args=config(tmp_path), train_dataset=dataset(), processing_class=tok)
    theirs = TRLTrainer(model=model, args=config(tmp_path, TRLConfig), train_dataset=dataset(), processing_class=tok)
    assert ours.train_dataset["input_ids"] == theirs.train_dataset["input_ids"]
    assert "augmented" not in ours.train_dataset.column_names


@pytest.mark.slow
def test_qlora_4bit_trains_on_cpu(tmp_path):
    pytest.importorskip("bitsandbytes")
    from trl import ModelConfig, get_peft_config

    from fastdistill.testing import save_tiny_causal_lm
    from fastdistill.trainers import model_init_kwargs

    path = save_tiny_causal_lm(tmp_path / "m")
    margs = ModelConfig(model_name_or_path=path, load_in_4bit=True, use_peft=True, lora_r=4, dtype="float32",
                        lora_target_modules=["q_proj", "v_proj"])
    args = config(tmp_path, max_steps=3, model_init_kwargs=model_init_kwargs(margs), learning_rate=2e-2)
    trainer = SFTTrainer(model=path, args=args, train_dataset=dataset(), peft_config=get_peft_config(margs))
    q_proj = trainer.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(q_proj).__name__ == "Linear4bit"
    trainer.train()
    assert len(train_losses(trainer)) == 3


def test_robust_augment_hook_rewrites_code_in_prompt_and_tests_still_pass(tmp_path):
    from fastdistill.augment.hooks import robust_augment_example
    from fastdistill.data import generate_tests_prompt
    from fastdistill.data.examples import load_examples
    from fastdistill.rewards import run_tests

    example = next(e for e in load_examples() if e["name"] == "running_sum")
    row = {"prompt": generate_tests_prompt(example["code"]), "code": example["code"], "completion": example["tests"]}
    changes = robust_augment_example(row, seed=3)
    assert changes["code"] != example["code"]
    assert changes["code"].rstrip() in changes["prompt"][-1]["content"]
    assert example["code"].rstrip() not in changes["prompt"][-1]["content"]
    assert run_tests(changes["code"], example["tests"]).ok
    model, tok = tiny_causal_lm(seed=0)
    rows = [dict(row, completion=[{"role": "assistant", "content": example["tests"]}])] * 4
    from datasets import Dataset
    args = config(tmp_path, max_steps=1, augment_fn="fastdistill.augment.hooks:robust_augment_example",
                  augment_probability=1.0, max_length=2048)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    assert all(trainer.train_dataset["augmented"])
    trainer.train()


def one_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def loss_grads_metrics(tmp_path, full_logits_loss):
    model, tok = tiny_causal_lm(seed=0)
    trainer = SFTTrainer(model=model, args=config(tmp_path, full_logits_loss=full_logits_loss),
                         train_dataset=dataset(), processing_class=tok)
    batch = one_batch(trainer)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics


def test_full_logits_loss_is_trls_loss_gradients_and_metrics(tmp_path, monkeypatch):
    calls = []
    original = torch.nn.functional.nll_loss
    monkeypatch.setattr(torch.nn.functional, "nll_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    fused_loss, fused_grads, fused_metrics = loss_grads_metrics(tmp_path, False)
    assert not calls  # TRL's fused, chunked head: no full-logits cross-entropy
    full_loss, full_grads, full_metrics = loss_grads_metrics(tmp_path, True)
    assert calls
    torch.testing.assert_close(full_loss, fused_loss, rtol=1e-5, atol=1e-6)
    assert full_grads.keys() == fused_grads.keys() and full_grads
    for name in fused_grads:
        torch.testing.assert_close(full_grads[name], fused_grads[name], rtol=1e-4, atol=1e-6)
    assert full_metrics.keys() == fused_metrics.keys() >= {"entropy", "mean_token_accuracy", "num_tokens"}
    for key in fused_metrics:
        assert full_metrics[key] == pytest.approx(fused_metrics[key], rel=1e-5, abs=1e-6), key


def test_default_takes_full_logits_on_cpu_for_small_batches_only(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    small = SFTTrainer(model=model, args=config(tmp_path), train_dataset=dataset(), processing_class=tok)
    batch = one_batch(small)
    assert small.args.full_logits_loss is None
    assert small._use_full_logits(small.model, batch, return_outputs=False)
    assert not small._use_full_logits(small.model, batch, return_outputs=True)  # TRL builds the outputs
    large = SFTTrainer(model=model, args=config(tmp_path, full_logits_max_elements=batch["input_ids"].numel()),
                       train_dataset=dataset(), processing_class=tok)
    assert not large._use_full_logits(large.model, batch, return_outputs=False)  # vocab > 1: over the limit
    trl_head = SFTTrainer(model=model, args=config(tmp_path, full_logits_loss=False), train_dataset=dataset(),
                          processing_class=tok)
    assert not trl_head._use_full_logits(trl_head.model, batch, return_outputs=False)
    forced = SFTTrainer(model=model, args=config(tmp_path, full_logits_loss=True), train_dataset=dataset(),
                        processing_class=tok)
    with pytest.raises(ValueError, match="caller asks for the outputs"):
        forced._use_full_logits(forced.model, batch, return_outputs=True)


def test_full_logits_loss_refuses_a_loss_it_does_not_compute(tmp_path):
    with pytest.raises(ValueError, match="full_logits_loss.*'dft'"):
        config(tmp_path, full_logits_loss=True, loss_type="dft")
    config(tmp_path, full_logits_loss=None, loss_type="dft")  # the default then keeps TRL's head
