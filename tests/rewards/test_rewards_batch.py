"""One-call batch scoring (``score_batch``) and the fused composite reward equal the plain paths."""

from fastdistill.augment import robust_augment
from fastdistill.data.examples import load_examples
from fastdistill.rewards import clear_cache, composite_reward, mutation_scores, run_tests
from fastdistill.rewards.mutation import score_batch

EX = {e["name"]: e for e in load_examples()}


def _outcomes(result):
    return [(m.description, m.line, m.killed, m.timed_out) for m in result.mutants]


def test_score_batch_matches_mutation_scores_and_run_tests():
    code, tests = EX["clamp"]["code"], EX["clamp"]["tests"]
    variant = robust_augment(code, seed=0)
    failing = "from solution import clamp\n\ndef test_wrong():\n    assert clamp(5, 0, 10) == 6\n"
    requests = [(code, tests, 30, None), (code, tests, 5, None), (variant, tests, 5, 1),
                (code, failing, 5, None), (robust_augment(code, seed=1), failing, 5, 3), (code, tests, 30, None)]
    clear_cache()
    results, runs = score_batch(requests, [(code, tests, 3), (code, failing, 2)], n_workers=2, use_cache=False)
    expected = [
        mutation_scores([code], [tests], max_mutants=30, use_cache=False)[0],
        mutation_scores([code], [tests], max_mutants=5, use_cache=False)[0],
        mutation_scores([variant], [tests], max_mutants=5, use_cache=False)[0],
        mutation_scores([code], [failing], max_mutants=5, use_cache=False)[0],
    ]
    for got, want in zip(results[:4], expected):
        assert (got.total, got.killed, got.kill_rate, got.baseline_ok) == (want.total, want.killed, want.kill_rate,
                                                                           want.baseline_ok)
        assert _outcomes(got) == _outcomes(want)
    assert results[0].baseline_ok and results[0].kill_rate > 0 and not results[3].baseline_ok
    assert results[4] is None  # needs request 3, whose tests fail on the CUT: not run
    assert results[5] is results[0]  # duplicate request, run once
    plain = run_tests(code, tests, repeats=3)
    assert runs[0].ok and plain.ok and len(runs[0].repeat_durations_s) == 3 and not runs[0].flaky
    assert sorted((t.nodeid.split("::")[-1], t.outcome) for t in runs[0].tests) == sorted(
        (t.nodeid.split("::")[-1], t.outcome) for t in plain.tests)
    assert not runs[1].ok and runs[1].failed + runs[1].errors >= 1


def test_score_batch_uses_and_fills_the_mutation_cache():
    code, tests = EX["digit_sum"]["code"], EX["digit_sum"]["tests"]
    clear_cache()
    first, _ = score_batch([(code, tests, 10, None)], [])
    again = mutation_scores([code], [tests], max_mutants=10)[0]
    assert again.cached and _outcomes(again) == _outcomes(first[0])
    third, _ = score_batch([(code, tests, 10, None)], [])
    assert third[0].cached


def test_fused_composite_equals_component_by_component():
    names = ["clamp", "binary_search", "fizzbuzz"]
    codes, completions = [], []
    for name in names:
        for g in range(2):  # distinct completions per prompt, like num_generations
            codes.append(EX[name]["code"])
            completions.append(f"```python\n{EX[name]['tests']}\n# generation {g}\n```")
    codes += [EX["clamp"]["code"], EX["clamp"]["code"]]
    completions += ["no tests here", "```python\nfrom solution import clamp\n\ndef test_bad():\n"
                    "    assert clamp(1, 2, 3) == 0\n```"]
    fused = composite_reward(preset="mutant", code_column="code")
    plain = composite_reward(preset="mutant", code_column="code", fused=False)
    clear_cache()
    a = fused(prompts=None, completions=completions, code=codes)
    ca = fused.last_components
    clear_cache()
    b = plain(prompts=None, completions=completions, code=codes)
    cb = plain.last_components
    assert ca["mutant_kill"] == cb["mutant_kill"] and ca["robustness"] == cb["robustness"]
    # speed is a timing: the same completions pass (> 0) and fail (0) on both paths
    assert [v > 0 for v in ca["speed_stability"]] == [v > 0 for v in cb["speed_stability"]]
    assert len(a) == len(b) == len(completions) and a[-2:] == [0.0, 0.0] and min(a[:6]) > 0


def test_paired_rewrites_run_only_where_the_original_mutant_was_killed(monkeypatch):
    """Explicit paired mutants: a rewrite runs iff the mutant it rewrites was killed; where it runs,
    its outcome equals running it unpaired."""
    import dataclasses

    from fastdistill.rewards import mutation
    from fastdistill.rewards.functions import _paired_rewrites

    statuses = []
    execute = mutation.execute_pairs

    def recording(specs, **kwargs):
        raws = execute(specs, **kwargs)
        statuses.append([job.status for raw in raws for job in sorted(raw.jobs, key=lambda j: j.i)])
        return raws

    monkeypatch.setattr(mutation, "execute_pairs", recording)
    code = EX["clamp"]["code"]
    weak = "from solution import clamp\n\ndef test_one():\n    assert clamp(5, 0, 10) == 5\n"
    variant = robust_augment(code, seed=0, flip_docstrings=1.0)
    paired = [m for _, m in _paired_rewrites(code, 0, None, 1.0)]
    unpaired = tuple(dataclasses.replace(m, pairs_with=None) for m in paired)
    clear_cache()
    (base, gated), _ = score_batch([(code, weak, None, None), (variant, weak, tuple(paired), 0)], n_workers=2,
                                   use_cache=False)
    (_, full), _ = score_batch([(code, weak, None, None), (variant, weak, unpaired, 0)], n_workers=2, use_cache=False)
    killed = [m.killed for m in base.mutants]
    assert 0 < sum(killed) < len(killed)  # a weak test: some mutants survive
    for was_killed, g, f in zip(killed, gated.mutants, full.mutants):
        assert g.killed == (f.killed if was_killed else False)
    assert statuses[0].count("skipped") == len(killed) - sum(killed)  # the survivors' rewrites did not run
    assert "skipped" not in statuses[1]


def test_pairs_are_sharded_over_idle_workers_with_the_same_results(monkeypatch):
    """Fewer test files than workers: a pair's mutants are split over several workers (each shard
    repeats the baselines); outcomes, paired-rewrite gating and repeats equal the unsplit run."""
    from fastdistill.rewards import mutation
    from fastdistill.rewards.functions import _paired_rewrites

    code, tests = EX["to_roman"]["code"], EX["to_roman"]["tests"]
    weak = tests.split("\ndef test_")[0] + "\ndef test_" + tests.split("\ndef test_")[1]  # the first test only
    variant = robust_augment(code, seed=0, flip_docstrings=1.0)
    paired = tuple(m for _, m in _paired_rewrites(code, 0, None, 1.0))
    requests = [(code, weak, None, None), (variant, weak, paired, 0)]
    run_specs = []
    execute = mutation.execute_pairs

    def recording(specs, **kwargs):
        run_specs.append(len(specs))
        return execute(specs, **kwargs)

    monkeypatch.setattr(mutation, "execute_pairs", recording)
    clear_cache()
    (base1, var1), runs1 = score_batch(requests, [(code, weak, 3)], n_workers=1, use_cache=False)
    (base3, var3), runs3 = score_batch(requests, [(code, weak, 3)], n_workers=3, use_cache=False)
    assert run_specs == [1, 3]  # the second call ran the one pair as three shards
    assert base1.total > 3 * 8 and 0 < base1.killed < base1.total
    assert _outcomes(base3) == _outcomes(base1) and _outcomes(var3) == _outcomes(var1)
    assert (base3.kill_rate, var3.kill_rate) == (base1.kill_rate, var1.kill_rate)
    assert runs3[0].ok and len(runs3[0].repeat_durations_s) == 3
