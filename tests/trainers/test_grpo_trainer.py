import os

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer as TRLGRPOTrainer

from fastdistill import GRPOConfig, GRPOTrainer
from fastdistill.losses import jsd_loss
from fastdistill.testing import save_tiny_causal_lm, tiny_causal_lm


def prompts_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"Write tests for f{i}"}], "code": f"def f{i}():\n    return {i}\n"}
         for i in range(n)]
    )


def length_reward(prompts, completions, **kwargs):
    return [len(c[0]["content"]) / 50 for c in completions]


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


def config(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path), bf16=False, max_steps=2, per_device_train_batch_size=4, num_generations=4,
                  max_completion_length=10, report_to=[], save_strategy="no", logging_steps=1, learning_rate=1e-3,
                  seed=0)
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def generation_batch(trainer):
    batch = [trainer.train_dataset[i] for i in range(4)]
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; we call the loss directly
    torch.manual_seed(0)
    return trainer._generate_and_score_completions(batch)


def test_without_jsd_the_loss_is_trls(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=config(tmp_path),
                          train_dataset=prompts_dataset(), processing_class=tok)
    inputs = generation_batch(trainer)
    assert "teacher_hidden" not in inputs
    ours = trainer._compute_loss(trainer.model, inputs)
    theirs = TRLGRPOTrainer._compute_loss(trainer, trainer.model, inputs)
    assert torch.equal(ours, theirs)


def test_jsd_term_is_logged_matches_reference_and_reaches_the_policy(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    teacher, _ = tiny_causal_lm(seed=1, tokenizer=tok)
    args = config(tmp_path, jsd_lambda=0.7, jsd_beta=0.3)
    trainer = GRPOTrainer(model=model, reward_funcs=[constant_reward], args=args, teacher_model=teacher,
                          train_dataset=prompts_dataset(), processing_class=tok)
    inputs = generation_batch(trainer)
    assert torch.all(inputs["advantages"] == 0)  # constant reward: the policy-gradient term has no gradient

    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum().item() for g in grads) > 0
    logged = trainer._metrics["train"]["jsd"][-1]

    # reference: full logits of both models on the completion positions, then jsd_loss
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    attn = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    k = inputs["completion_ids"].size(1)
    with torch.no_grad():
        s = trainer.model(input_ids=ids, attention_mask=attn).logits[:, -k - 1 : -1]
        t = teacher(input_ids=ids, attention_mask=attn).logits[:, -k - 1 : -1]
    expected = jsd_loss(s, t, beta=0.3, mask=inputs["completion_mask"].bool())
    assert logged == pytest.approx(expected.item(), rel=1e-4)
    assert expected.item() > 0


def test_training_with_default_teacher_logs_jsd(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[length_reward], args=config(tmp_path, jsd_lambda=0.5, max_steps=3),
                          train_dataset=prompts_dataset(), processing_class=tok)
    assert trainer.teacher_model is not None and not trainer._teacher_is_ref  # frozen copy of the initial policy
    trainer.train()
    jsd = [h["jsd"] for h in trainer.state.log_history if "jsd" in h]
    assert len(jsd) == 3 and jsd[0] == pytest.approx(0.0, abs=1e-6) and jsd[-1] > 0  # policy drifts from its copy


def test_teacher_forward_overlaps_the_rewards_and_gives_the_same_batch(tmp_path):
    import threading

    def make(overlap):
        model, tok = tiny_causal_lm(seed=0)
        teacher, _ = tiny_causal_lm(seed=1, tokenizer=tok)
        args = config(tmp_path, jsd_lambda=0.5, overlap_teacher_forward=overlap)
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, teacher_model=teacher,
                              train_dataset=prompts_dataset(), processing_class=tok)
        return trainer, teacher

    ran = threading.Event()
    seen = []

    def reward(prompts, completions, **kwargs):  # returns only once the teacher forward ran meanwhile
        seen.append(ran.wait(timeout=30))
        return [1.0] * len(completions)

    trainer, teacher = make(True)
    threads = []
    def hook(*args):
        threads.append(threading.current_thread().name)
        ran.set()

    teacher.model.register_forward_hook(hook)
    overlapped = generation_batch(trainer)
    assert seen == [True] and threads and threads[0].startswith("fastdistill-teacher")

    ran.set()  # the reference run does not wait
    plain, plain_teacher = make(False)
    assert plain._teacher_pool is None
    reference = generation_batch(plain)
    assert torch.equal(overlapped["completion_ids"], reference["completion_ids"])
    assert torch.equal(overlapped["teacher_hidden"], reference["teacher_hidden"])
    assert torch.equal(trainer._compute_loss(trainer.model, overlapped), plain._compute_loss(plain.model, reference))


def test_teacher_runs_each_prompt_once_and_matches_the_full_forward():
    from fastdistill.trainers.grpo import _shared_prefix_forward

    model, tok = tiny_causal_lm(seed=1)
    backbone = model.model.eval()
    torch.manual_seed(0)
    pad = tok.pad_token_id
    prompts = [torch.randint(5, 100, (n,)) for n in (7, 11)]  # left-padded to 11, 4 generations each
    rows, masks = [], []
    for p in prompts:
        for _ in range(4):
            c = torch.randint(5, 100, (int(torch.randint(2, 6, ())),))
            ids = torch.cat([torch.full((11 - len(p),), pad), p, c, torch.full((5 - len(c),), pad)])
            mask = torch.cat([torch.zeros(11 - len(p)), torch.ones(len(p) + len(c)), torch.zeros(5 - len(c))])
            rows.append(ids)
            masks.append(mask.long())
    input_ids, attention_mask = torch.stack(rows), torch.stack(masks)
    seen = []
    handle = backbone.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["input_ids"].shape),
                                                with_kwargs=True)
    with torch.no_grad():
        shared = _shared_prefix_forward(backbone, input_ids, attention_mask, prompt_len=11)
    handle.remove()
    with torch.no_grad():
        full = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert seen == [torch.Size([2, 11]), torch.Size([8, 5])]  # each distinct prompt once, then the completions
    keep = attention_mask.bool()
    torch.testing.assert_close(shared[keep], full[keep], atol=1e-5, rtol=1e-5)


def test_overlap_defaults_to_on_only_for_an_accelerator_teacher(tmp_path):
    model, tok = tiny_causal_lm(seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[constant_reward], args=config(tmp_path, jsd_lambda=0.5),
                          train_dataset=prompts_dataset(), processing_class=tok)
    on_accelerator = next(trainer.teacher_model.parameters()).device.type != "cpu"
    assert trainer.args.overlap_teacher_forward is None
    assert (trainer._teacher_pool is not None) == on_accelerator  # off on CPU (it would compete with the sandbox)


def test_reference_model_forward_is_reused(tmp_path):
    path = save_tiny_causal_lm(tmp_path / "policy")
    args = config(tmp_path, jsd_lambda=0.5, beta=0.04)
    trainer = GRPOTrainer(model=path, reward_funcs=[length_reward], args=args, train_dataset=prompts_dataset())
    assert trainer._teacher_is_ref and trainer.teacher_model is trainer.ref_model
    calls = []
    backbone = trainer.ref_model.model
    handle = backbone.register_forward_hook(lambda *a: calls.append(1))
    try:
        inputs = generation_batch(trainer)
    finally:
        handle.remove()
    assert len(calls) == 1  # TRL's own reference forward, no second teacher pass
    assert inputs["teacher_hidden"].shape[:2] == inputs["completion_ids"].shape
    loss = trainer._compute_loss(trainer.model, inputs)
    assert torch.isfinite(loss)


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="reward_preset"):
        config(tmp_path, reward_preset="fast")
    with pytest.raises(ValueError, match="jsd_lambda"):
        config(tmp_path, jsd_lambda=-1.0)


def test_default_rewards_run_the_generated_tests_and_log_components(tmp_path):
    from fastdistill.data import generate_tests_prompt
    from fastdistill.data.examples import load_examples

    examples = load_examples()[:2]
    ds = Dataset.from_list([{"prompt": generate_tests_prompt(e["code"]), "code": e["code"]} for e in examples])
    model, tok = tiny_causal_lm(seed=0)
    trainer = GRPOTrainer(model=model, args=config(tmp_path, reward_preset="speed", max_steps=1),
                          train_dataset=ds, processing_class=tok)
    assert trainer.reward_func_names == ["composite_reward_speed"]
    # an answer that really tests the code scores > 0; random tokens score 0 (they are not a test file)
    good = examples[0]["tests"]
    scores = trainer.reward_funcs[0](prompts=[None, None], completions=[[{"role": "assistant", "content": good}],
                                     [{"role": "assistant", "content": "zz qq"}]], code=[examples[0]["code"]] * 2)
    assert scores[0] > 0 and scores[1] == 0
    from fastdistill.rewards import sandbox

    assert any(w.owner_pid == os.getpid() for w in sandbox._IDLE)  # the reward keeps its workers warm
    trainer.train()
    logged = trainer.state.log_history[0]
    for name in ("rewards/mutant_kill", "rewards/speed_stability", "rewards/robustness"):
        assert name in logged
    assert not any(w.owner_pid == os.getpid() for w in sandbox._IDLE)  # and they are stopped at train end


def test_frozen_copy_of_an_accelerate_prepared_model_runs_its_own_weights():
    """accelerate (mixed precision) binds an instance-level forward to the model; a deepcopy kept it bound to the
    original, so the GRPO teacher copy of the initial policy silently followed the policy."""
    import copy

    from accelerate import Accelerator

    from fastdistill.testing import tiny_causal_lm
    from fastdistill.trainers.utils import frozen_copy

    from accelerate.state import AcceleratorState

    model, _ = tiny_causal_lm(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    AcceleratorState._reset_state(reset_partial_state=True)  # an earlier trainer's state would ignore bf16
    try:
        Accelerator(mixed_precision="bf16", cpu=True).prepare_model(model)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # leave no bf16 state to later tests
    assert "_original_forward" in model.__dict__  # accelerate wrapped the forward
    ids = torch.tensor([[1, 2, 3, 4]])
    frozen, naive = frozen_copy(model), copy.deepcopy(model)
    before = frozen(input_ids=ids).logits.detach()
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # the policy trains on
    assert torch.equal(frozen(input_ids=ids).logits, before)
    assert not torch.equal(naive(input_ids=ids).logits, before)  # the bug this guards against
