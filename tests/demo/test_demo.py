"""`fastdistill demo --quick`: the report's structure, and its numbers come from the evaluation."""

import json
import statistics
from pathlib import Path

import pytest

from fastdistill.demo import STUDENTS, DemoConfig, main, public_names, rename_public_names, run_demo
from fastdistill.evaluation import read_jsonl, score_mutation


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["--quick", "--threads", "1", "--output-dir", str(out)]) == 0
    return out


def mean(values):
    return statistics.fmean(values) if values else None


@pytest.mark.slow
def test_demo_writes_report_plot_and_curation_files(demo_dir, capsys):
    for name in ("report.md", "report.json", "pareto.png", "curation/manifest.json", "curation/quality_report.json",
                 "curation/timing_report.json", "curation/teacher_generations.jsonl"):
        assert (demo_dir / name).is_file(), name
    assert (demo_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (demo_dir / "report.md").read_text()
    assert "| model | kill rate (greedy) | kill rate (samples) | pass rate | test runtime (ms)" in md
    assert "learned the reference tests of the training split by SFT" in md
    for name in STUDENTS:
        assert f"| {name} |" in md
    report = json.loads((demo_dir / "report.json").read_text())
    assert report["acceptance"]["kill_rate_statement"] in md and report["acceptance"]["speed_statement"] in md
    assert set(report["timings_s"]) >= {"teacher_sft", "curation", "student_sft", "student_gkd", "grpo_mutant",
                                        "grpo_speed", "evaluation"}
    steps = [s["name"] for s in report["curation"]["steps"]]
    assert steps[:2] == ["teacher_generate", "canonicalize"] and steps[-1] == "keep_by_score"
    assert "tests_exec_eval" in steps and "deduplicate" in steps


@pytest.mark.slow
def test_headlines_are_means_of_held_out_rows(demo_dir):
    report = json.loads((demo_dir / "report.json").read_text())
    held_out = report["held_out_names"]
    assert held_out and not set(held_out) & set(report["train_names"])
    assert report["grpo_prompt_names"] and not set(held_out) & set(report["grpo_prompt_names"])
    assert set(report["students"]) == set(STUDENTS)
    for name, res in {**report["students"], "teacher": report["teacher"]}.items():
        rows, speed_rows = res["mutation_rows"], res["speed_rows"]
        assert [r["name"] for r in rows] == held_out == [r["name"] for r in speed_rows]
        assert res["kill_rate"] == pytest.approx(mean([r["kill_rate"] for r in rows]))
        assert res["pass_rate"] == pytest.approx(mean([float(r["passed"]) for r in rows]))
        timed = [r["runtime_s"] for r in speed_rows if r["ran"] and r["passed"]]
        assert res["n_timed"] == len(timed)
        assert res["runtime_s"] == (pytest.approx(mean(timed)) if timed else None)
        generations = read_jsonl(demo_dir / "generations" / f"{name}.jsonl")
        assert [g["name"] for g in generations] == held_out
    assert set(report["seen_names"]) <= set(report["train_names"])
    for name, res in report["seen_code"].items():
        assert [r["name"] for r in res["mutation_rows"]] == report["seen_names"]
        assert res["kill_rate"] == pytest.approx(mean([r["kill_rate"] for r in res["mutation_rows"]]))
    # every held-out instance also has sampled completions (compared students); per-instance values pair them
    k = report["config"]["eval_samples"]
    for name in ("sft", "gkd", "grpo_mutant", "grpo_speed"):
        res = report["students"][name]
        assert len(res["sample_rows"]) == k * len(held_out) == res["sampled"]["n"]
        per = res["per_instance"]
        assert all(len(v) == len(held_out) for v in per.values())
        for i, row in enumerate(res["mutation_rows"]):
            samples = [r["kill_rate"] for r in res["sample_rows"] if r["name"] == row["name"]]
            assert per["kill"][i] == pytest.approx(mean([row["kill_rate"]] + samples))
        assert len(read_jsonl(demo_dir / "generations" / f"{name}.samples.jsonl")) == k * len(held_out)
    comps = report["acceptance"]["comparisons"]
    assert set(comps) == {"grpo_mutant_vs_sft_kill", "grpo_speed_vs_grpo_mutant_runtime", "gkd_vs_sft_kill"}
    for c in comps.values():
        assert c["statement"] in (demo_dir / "report.md").read_text()
        assert "as intended" not in c["statement"]
    assert report["environment"]["seed"] == report["config"]["seed"]
    for branch in ("grpo_mutant", "grpo_speed"):  # the GRPO signal diagnostic: one value per logged step
        zero_std = report["training"][branch]["frac_reward_zero_std"]
        assert len(zero_std) == report["config"]["grpo_steps"] and all(0 <= v <= 1 for v in zero_std)
    assert report["environment"]["versions"]["torch"]
    # re-scoring the saved completions of a student gives the reported numbers
    again = score_mutation(read_jsonl(demo_dir / "generations" / "sft.jsonl"),
                           max_mutants=report["config"]["max_mutants"], progress=False)
    assert again["kill_rate"] == pytest.approx(report["students"]["sft"]["kill_rate"])


@pytest.mark.slow
def test_demo_is_deterministic(demo_dir, tmp_path):
    run_demo(tmp_path, DemoConfig.quick())
    for name in (*STUDENTS, "teacher"):
        first = [g["completion"] for g in read_jsonl(demo_dir / "generations" / f"{name}.jsonl")]
        second = [g["completion"] for g in read_jsonl(Path(tmp_path) / "generations" / f"{name}.jsonl")]
        assert first == second, name
    a = json.loads((demo_dir / "report.json").read_text())
    b = json.loads((tmp_path / "report.json").read_text())
    kill = [{k: v["kill_rate"] for k, v in r["students"].items()} for r in (a, b)]
    assert kill[0] == kill[1]


def test_renaming_keeps_reference_tests_passing():
    from fastdistill.data.examples import load_examples
    from fastdistill.rewards import run_tests

    ex = next(e for e in load_examples() if e["name"] == "celsius_fahrenheit")
    code, tests = rename_public_names(ex["code"], ex["tests"], seed=3)
    assert public_names(ex["tests"]) == ["c_to_f", "f_to_c"]
    new = public_names(tests)
    assert len(new) == 2 and not set(new) & {"c_to_f", "f_to_c"}
    assert all(f"def {n}(" in code for n in new)
    assert run_tests(code, tests).ok
    assert rename_public_names(ex["code"], ex["tests"], seed=3) == (code, tests)


def test_family_split_is_disjoint_and_reference_tests_behave():
    from fastdistill.demo import FAMILIES, LOOP_RANGE, STYLES, family_examples, family_test, shape_of_tests
    from fastdistill.demo.report import _test_shape
    from fastdistill.rewards import run_tests
    from fastdistill.rewards.mutation import mutation_score

    train, held_out = family_examples(seed=0, n_train=120, n_held_out=12)
    assert (train, held_out) == family_examples(seed=0, n_train=120, n_held_out=12)
    extra = family_examples(seed=0, n_train=120, n_held_out=12, n_extra=10)
    assert extra[:2] == (train, held_out) and len(extra[2]) == 10
    words = [{ex["name"].split("_")[1] for ex in rows} for rows in (train, held_out)]
    consts = [{ex["name"].split("_")[2] for ex in rows} for rows in (train, held_out)]
    assert not words[0] & words[1] and not consts[0] & consts[1]
    extra_words = {ex["name"].split("_")[1] for ex in extra[2]}
    assert not extra_words & (words[0] | words[1]) and not {ex["name"].split("_")[2] for ex in extra[2]} & consts[1]
    assert {ex["family"] for ex in held_out} == set(FAMILIES) and {ex["style"] for ex in train} == set(STYLES)
    total = {style: 0.0 for style in STYLES}
    for family in FAMILIES:
        code = FAMILIES[family][0].format(n=f"{family}_zo", w="zo", c=42)
        kills = {}
        for style in STYLES:
            tests = family_test(family, "zo", 42, style)
            assert run_tests(code, tests).ok, (family, style)
            kills[style] = mutation_score(code, tests, max_mutants=15).kill_rate
            total[style] += kills[style]
        # strong checks kill every mutant; the weak check misses some; the loop kills something
        assert kills["strong"] == 1.0 and kills["weak"] < 1.0 and kills["loop"] > 0, (family, kills)
        loop = family_test(family, "zo", 42, "loop")
        assert shape_of_tests(loop) == (1, 1) and f"for v in range({LOOP_RANGE}))" in loop
        assert _test_shape(loop)[2] == 1  # the report counts the generator as the file's loop
        # the loop needs no constant: the same file for every constant a family draws, and it passes on each
        for const in (10, 99):
            assert family_test(family, "zo", const, "loop") == loop
            assert run_tests(FAMILIES[family][0].format(n=f"{family}_zo", w="zo", c=const), loop).ok, (family, const)
    # over the families the loop kills more than the weak check: what the mutant reward can prefer it for
    assert total["loop"] > total["weak"] + 0.5, total
