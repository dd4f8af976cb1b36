"""The demo's claims are paired bootstrap intervals: built from per-instance values, never a point estimate."""

from types import SimpleNamespace

import pytest

from fastdistill.demo import acceptance, comparisons, environment
from fastdistill.demo.report import environment_line

CFG = SimpleNamespace(bootstrap_resamples=2000, seed=0)


def student(kill, runtime, k=4):
    return {"per_instance": {"kill": kill, "kill_greedy": kill, "runtime_ms": runtime},
            "sampled": {"k": k, "temperature": 0.7}}


def test_a_clear_gain_is_stated_higher_with_its_interval_and_ties_are_not_distinguishable():
    n = 96
    sft = student([0.4 + 0.01 * (i % 5) for i in range(n)], [5.0 + 0.1 * (i % 3) for i in range(n)])
    mutant = student([v + 0.12 + 0.02 * (i % 3 - 1) for i, v in enumerate(sft["per_instance"]["kill"])],
                     sft["per_instance"]["runtime_ms"])
    speed = student(sft["per_instance"]["kill"], [1.0 + 0.1 * (i % 4) if i % 2 else None for i in range(n)])
    acc = acceptance({"sft": sft, "gkd": sft, "grpo_mutant": mutant, "grpo_speed": speed}, "held-out", CFG)
    assert acc["grpo_mutant_kill_rate_above_sft"] and acc["grpo_speed_faster_than_mutant"] and acc["gkd_not_below_sft"]
    kill = acc["comparisons"]["grpo_mutant_vs_sft_kill"]
    assert kill["diff"] == pytest.approx(0.12) and 0 < kill["low"] < 0.12 < kill["high"]
    assert "higher (+0.120, 95% CI +0.1" in acc["kill_rate_statement"]
    assert "greedy completion and 4 samples at temperature 0.7" in acc["kill_rate_statement"]
    speed_cmp = acc["comparisons"]["grpo_speed_vs_grpo_mutant_runtime"]
    assert speed_cmp["n"] == n // 2  # only instances where both files pass (have a runtime)
    assert "faster (-" in acc["speed_statement"] and " ms" in acc["speed_statement"]
    assert "not distinguishable (+0.000" in acc["gkd_statement"]
    for text in (acc["kill_rate_statement"], acc["speed_statement"], acc["gkd_statement"]):
        assert "as intended" not in text


def test_a_point_gain_inside_the_noise_is_not_claimed():
    sft = student([0.0, 1.0] * 12, [1.0] * 24)
    mutant = student([1.0, 0.0] * 11 + [1.0, 1.0], [1.0] * 24)  # +1/24 on the mean, by one instance
    acc = acceptance({"sft": sft, "gkd": sft, "grpo_mutant": mutant, "grpo_speed": mutant}, "held-out", CFG)
    assert acc["comparisons"]["grpo_mutant_vs_sft_kill"]["diff"] > 0
    assert not acc["grpo_mutant_kill_rate_above_sft"]
    assert "not distinguishable" in acc["kill_rate_statement"]


def test_pooled_comparisons_resample_within_seeds():
    sft = student([0.0] * 20, [1.0] * 20)
    mutant = student([1.0] * 10 + [-1.0] * 10, [1.0] * 20)
    res = comparisons({"sft": sft, "grpo_mutant": mutant}, CFG, strata=[0] * 10 + [1] * 10)
    assert set(res) == {"grpo_mutant_vs_sft_kill"}
    assert res["grpo_mutant_vs_sft_kill"]["low"] == res["grpo_mutant_vs_sft_kill"]["high"] == 0.0


def test_environment_names_machine_versions_and_seed():
    env = environment(SimpleNamespace(seed=7))
    assert env["seed"] == 7 and env["versions"]["torch"] and env["versions"]["trl"] and env["cpus"]
    line = environment_line(env)
    assert "seed 7" in line and f"torch {env['versions']['torch']}" in line and "machine:" in line


def test_greedy_files_of_all_models_are_timed_in_one_instance_major_batch_each_distinct_file_once(monkeypatch):
    """A file two models wrote gets one runtime (no drift between two timings of the same file can pass for an
    effect), and the batch goes instance by instance so drift moves every model alike."""
    from fastdistill.demo import run as demo_run
    from fastdistill.rewards import mutation

    code = "def f(x):\n    return x + 1\n"
    fast = "from solution import f\n\n\ndef test_f():\n    assert f(1) == 2\n"
    slow = "from solution import f\n\n\ndef test_f():\n    for v in range(20000):\n        assert f(v) == v + 1\n"
    broken = "from solution import f\n\n\ndef test_f():\n    assert f(1) == 3\n"

    def model(files):
        return {"mutation_rows": [{"index": i, "name": f"i{i}", "sample": 0, "extracted": t is not None, "tests": t,
                                   "passed": t is not None and t != broken}  # as the mutation run found
                                  for i, t in enumerate(files)],
                "per_instance": {}}

    results = {"a": model([fast, slow, broken, None]), "b": model([fast, fast, slow, fast])}
    seen = []
    real = mutation.score_batch

    def recording(m_requests, t_requests, **kw):
        seen.append([t for _, t, _ in t_requests])
        return real(m_requests, t_requests, **kw)

    monkeypatch.setattr(mutation, "score_batch", recording)
    demo_run._time_greedy_files(results, [{"code": code}] * 4, SimpleNamespace(speed_repeats=2, workers=1))
    # instance 0: a=b=fast; 1: a=slow (b=fast known); 2: a=broken (failed when mutation-scored: not timed), b=slow
    assert seen == [[fast, slow]]
    a, b = results["a"]["per_instance"]["runtime_ms"], results["b"]["per_instance"]["runtime_ms"]
    assert a[0] == b[0] == b[1] == b[3] and a[1] == b[2]  # one measurement per distinct file
    assert a[1] > a[0] and a[2] is None and a[3] is None  # the loop is slower; failing or missing files: no time
    assert results["a"]["n_timed"] == 2 and results["b"]["n_timed"] == 4
    assert results["a"]["speed_rows"][3]["reason"] == "no test file in the completion"
    assert "not timed" in results["a"]["speed_rows"][2]["reason"] and not results["a"]["speed_rows"][2]["ran"]
    assert results["b"]["runtime_s"] is not None
