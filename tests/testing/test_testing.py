import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fastdistill.testing import save_tiny_causal_lm, tiny_causal_lm, tiny_tokenizer


def test_tokenizer_is_deterministic_and_round_trips_code():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = "def f(x):\n    return x * 2  # ünïcode ✓\n"
    assert a.decode(a(text, add_special_tokens=False)["input_ids"]) == text
    assert a.pad_token_id is not None and a.eos_token == "<|im_end|>"


def test_chat_template_puts_completion_after_prompt():
    tok = tiny_tokenizer()
    prompt = [{"role": "user", "content": "hi"}]
    p = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "ok"}], tokenize=False)
    assert full.startswith(p) and full[len(p):] == "ok<|im_end|>\n"


def test_same_seed_same_weights_and_saved_model_loads(tmp_path):
    m1, tok = tiny_causal_lm(seed=3)
    m2, _ = tiny_causal_lm(seed=3, tokenizer=tok)
    m3, _ = tiny_causal_lm(seed=4, tokenizer=tok)
    assert torch.equal(m1.lm_head.weight, m2.lm_head.weight)
    assert not torch.equal(m1.lm_head.weight, m3.lm_head.weight)
    path = save_tiny_causal_lm(tmp_path / "tiny", seed=3)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    loaded_tok = AutoTokenizer.from_pretrained(path)
    ids = torch.tensor([tok("def test_x(): pass")["input_ids"]])
    assert loaded_tok("def test_x(): pass")["input_ids"] == ids[0].tolist()
    torch.testing.assert_close(loaded(ids).logits, m1(ids).logits)
