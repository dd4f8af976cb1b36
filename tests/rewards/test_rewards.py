"""TRL reward functions: extraction, scores, composite and presets."""

import pytest

from fastdistill.data.examples import load_examples
from fastdistill.rewards import (
    PRESETS,
    composite_reward,
    extract_test_code,
    mutant_kill_reward,
    robustness_reward,
)
from fastdistill.rewards.functions import SpeedStabilityReward

EX = {e["name"]: e for e in load_examples()}
CODE = EX["clamp"]["code"]
TESTS = EX["clamp"]["tests"]


def test_extract_from_fences_chat_and_garbage():
    chat = f"Sure! Here are tests:\n\n```python\n{TESTS}```\nHope this helps."
    assert extract_test_code(chat).strip() == TESTS.strip()
    assert extract_test_code([{"role": "assistant", "content": chat}]).strip() == TESTS.strip()
    unfenced = "Here you go:\n" + TESTS + "\nThese cover the edge cases."
    assert "def test_clamp" in extract_test_code(unfenced)
    assert extract_test_code("I cannot do that.") is None
    assert extract_test_code("```python\ndef test_x(:\n```") is None
    assert extract_test_code("```python\nx = 1\n```") is None  # no test function
    assert extract_test_code(None) is None


def test_mutant_kill_reward_ranks_completions():
    weak = "```python\nfrom solution import clamp\n\ndef test_one():\n    assert clamp(5, 0, 10) == 5\n```"
    completions = [f"```python\n{TESTS}```", weak, "no code here", [{"role": "assistant", "content": "```py\n```"}]]
    scores = mutant_kill_reward(prompts=["p"] * 4, completions=completions, code=[CODE] * 4)
    assert len(scores) == 4 and all(isinstance(s, float) for s in scores)
    assert scores[0] > scores[1] > 0.0
    assert scores[2] == 0.0 and scores[3] == 0.0


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="code"):
        mutant_kill_reward(prompts=["p"], completions=["x"])


def test_speed_stability_zero_for_failing_and_flaky():
    fail = "from solution import clamp\n\ndef test_f():\n    assert clamp(1, 0, 2) == 2\n"
    flaky = (
        "import os\nfrom solution import clamp\n\n"
        "def test_flaky():\n    assert os.urandom(1)[0] % 2 == 0\n"
    )
    slow = ("import time\nfrom solution import clamp\n\n"
            "def test_s():\n    time.sleep(0.2)\n    assert clamp(1, 0, 2) == 1\n")
    reward = SpeedStabilityReward(repeats=6)
    scores = reward(prompts=None, completions=[TESTS, fail, flaky, slow], code=[CODE] * 4)
    assert scores[1] == 0.0 and scores[2] == 0.0
    assert scores[0] > scores[3] > 0.0


def test_robustness_reward_penalises_source_dependent_tests():
    brittle = (
        "import inspect\nfrom solution import clamp\n\n"
        "def test_src():\n    assert clamp(5, 0, 10) == 5\n    assert 'if x < lo' in inspect.getsource(clamp)\n"
        "    assert clamp.__code__.co_varnames == ('x', 'lo', 'hi')\n"
        "    assert clamp.__doc__ is not None\n"
    )
    scores = robustness_reward(prompts=None, completions=[TESTS, brittle], code=[CODE, CODE])
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] < scores[0]


def test_robustness_reward_is_paired_keep_killing_fraction():
    """Tests that still pass on the rewrite but only assert while the docstring is there kill the
    original's mutants and none of their rewrites: robustness 0, while a robust file scores exactly 1."""
    gated = (
        "from solution import clamp\n\n"
        "def test_gated():\n    if clamp.__doc__:\n"
        "        assert clamp(5, 0, 10) == 5 and clamp(-3, 0, 10) == 0 and clamp(42, 0, 10) == 10\n"
    )
    assert mutant_kill_reward(prompts=None, completions=[gated], code=[CODE])[0] > 0.3
    scores = robustness_reward(prompts=None, completions=[TESTS, gated], code=[CODE, CODE])
    assert scores == [1.0, 0.0]


def test_robustness_reward_pairs_each_sampled_mutant_with_its_rewrite():
    from fastdistill.rewards.functions import RobustnessReward, _paired_rewrites
    from fastdistill.rewards.mutation import generate_mutants

    reward = RobustnessReward()
    codes, tests = [CODE], [TESTS]
    requests, _, _ = reward._plan(codes, tests)
    (base_code, _, cap, needs), (variant, _, paired, base_index) = requests
    assert base_code == CODE and needs is None and base_index == 0 and variant != CODE
    sample = generate_mutants(CODE, max_mutants=cap)
    assert [j for j, _ in _paired_rewrites(CODE, 0, cap, 1.0)] == list(range(len(sample)))
    for original, rewritten in zip(sample, paired):
        assert rewritten.source != original.source and rewritten.description == original.description
        assert '"""' not in rewritten.source and "'Limit" not in rewritten.source  # docstring flipped away


def test_composite_combines_and_exposes_components():
    reward = composite_reward(weights={"mutant_kill": 1.0, "speed_stability": 1.0})
    assert reward.weights == {"mutant_kill": 0.5, "speed_stability": 0.5}
    scores = reward(prompts=None, completions=[TESTS, "nothing"], code=[CODE, CODE])
    comps = reward.last_components
    assert set(comps) == {"mutant_kill", "speed_stability", "composite"}
    assert scores == comps["composite"]
    assert scores[0] == pytest.approx(0.5 * comps["mutant_kill"][0] + 0.5 * comps["speed_stability"][0])
    assert scores[1] == 0.0
    with pytest.raises(ValueError):
        composite_reward(weights={"bogus": 1.0})


def test_presets():
    assert set(PRESETS) >= {"mutant", "speed"}
    mutant, speed = composite_reward.preset("mutant"), composite_reward(preset="speed")
    assert mutant.weights["mutant_kill"] > speed.weights["mutant_kill"]
    assert speed.weights["speed_stability"] > mutant.weights["speed_stability"]
    assert mutant.__name__ == "composite_reward_mutant"
