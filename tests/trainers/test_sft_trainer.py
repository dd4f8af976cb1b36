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
