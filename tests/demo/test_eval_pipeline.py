"""The demo's evaluation overlaps one model's sandbox scoring with the next model's generation."""

import threading
from types import SimpleNamespace

import pytest
import torch

from fastdistill.demo import run as demo_run

PLAN = {name: (object(), 8, 0 if name == "base" else 4) for name in ("base", "sft", "gkd", "grpo_mutant", "grpo_speed")}
PLAN["teacher"] = (object(), 8, 0)


def test_scoring_runs_in_the_background_while_the_next_model_generates(monkeypatch, tmp_path):
    generated, scored = [], []
    teacher_scoring = threading.Event()
    before = torch.get_num_threads()

    def generate(name, model, tokenizer, held_out, cfg, out, max_new_tokens, samples):
        assert model is PLAN[name][0] and max_new_tokens == 8 and samples == PLAN[name][2]
        generated.append((name, torch.get_num_threads()))
        if name == "sft":  # the teacher's batch is being scored now, not after the last generation
            assert teacher_scoring.wait(10), "the teacher's completions were not scored while sft generated"
        return [{"name": name}], [{"name": name}] * samples

    def score(gens, sampled, samples, cfg, max_new_tokens):
        name = gens[0]["name"]
        assert threading.current_thread() is not threading.main_thread()
        scored.append(name)
        if name == "teacher":
            teacher_scoring.set()
        return {"name": name, "n": len(gens) + len(sampled)}

    monkeypatch.setattr(demo_run, "_generate_for_eval", generate)
    monkeypatch.setattr(demo_run, "_score_for_eval", score)
    cfg = SimpleNamespace(eval_threads=1)
    results = demo_run._evaluate_models(PLAN, None, [], cfg, tmp_path)
    assert list(results) == list(PLAN)  # in the plan's order, each its own model's
    assert all(res["name"] == name and res["n"] == 1 + PLAN[name][2] for name, res in results.items())
    order = [name for name, _ in generated]
    assert order[0] == "teacher" and order[-1] == "base" and sorted(order) == sorted(PLAN)
    assert scored == order  # one scoring thread, in generation order
    assert {threads for _, threads in generated} == {1}
    assert torch.get_num_threads() == before


def test_a_failed_scoring_batch_fails_the_evaluation(monkeypatch, tmp_path):
    before = torch.get_num_threads()
    monkeypatch.setattr(demo_run, "_generate_for_eval", lambda name, *a: ([{"name": name}], []))

    def score(gens, *a):
        if gens[0]["name"] == "sft":
            raise RuntimeError("sandbox gone")
        return {}

    monkeypatch.setattr(demo_run, "_score_for_eval", score)
    with pytest.raises(RuntimeError, match="sandbox gone"):
        demo_run._evaluate_models(PLAN, None, [], SimpleNamespace(eval_threads=1), tmp_path)
    assert torch.get_num_threads() == before
