"""``fastdistill demo``: the offline end-to-end run that is the README's main command.

**The task** is a generated curriculum of *function families* (:data:`FAMILIES`: threshold above /
below, add a constant, clamp, prefix check, list membership), built so that tiny random-weight
models from :mod:`fastdistill.testing` can learn it in minutes on a CPU: a good test is written by
copying the function name and the constant from the prompt into boundary checks. Instances are
named ``<family>_<made-up word>`` with a constant in 10..99; the held-out instances use words and
constants that no training instance uses, so evaluation is on unseen code. The training
reference tests come in three styles: *weak* (one check that misses boundary mutants), *strong*
(boundary checks) and *loop* (one ``assert all(...)`` over ~10k inputs of a check that holds for
every constant of the family: it needs no constant, kills more than weak for three families, and
takes a few ms). (The bundled hand-written examples are not used:
38 of them are too few for a tiny model to learn to test arbitrary unseen functions.)

1. **Teacher.** A tiny random model cannot write tests, so the teacher first *learns the
   reference tests of the training split by SFT* (that is what a teacher is here).
2. **Curation** of the teacher's outputs on the training prompts: canonicalize -> SHA-256 hash ->
   exact dedup -> rule filter (parses as Python) -> run the tests and mutation-score them ->
   score -> keep_by_score; manifest, quality report and timing report go to ``curation/``.
3. **Student** (smaller): SFT on the curated data, then GKD to the live teacher (CE + JSD), then
   two GRPO branches from the same GKD checkpoint, rewarded by really running the generated
   tests: "mutant" (mutant-kill preset, higher temperature, longer completions) and "speed"
   (speed/stability preset, lower temperature, shorter completions).
4. **Evaluation** of base / SFT / GKD / GRPO-mutant / GRPO-speed (and the teacher, for reference)
   on the HELD-OUT instances only (96 by default, every family): per instance a greedy completion
   and, for the compared students, ``eval_samples`` sampled ones, all mutation-scored in one sandbox
   batch; the greedy test files are also timed. ``report.json`` holds the
   per-example rows whose means are the headline numbers, ``report.md`` the table, ``pareto.png``
   the plot.

Before step 1 the sandbox scores the reference tests of a few held-out instances. A stage that
produces nothing usable (that check scores nothing, curation keeps no row, every kill rate in the
report is 0) raises :class:`DemoFailed`, and ``fastdistill demo`` exits 1 with its message.

Reproducibility: seeds, torch threads and (where torch offers them) deterministic algorithms are
fixed, so a rerun on the same machine and versions repeats the teacher, SFT and GKD models; the
GRPO rewards include measured test runtimes, so GRPO students can differ slightly even there.
Bit-for-bit equality across machines is not promised (floating-point results differ and the runs
part ways during training), so the demo's claims are statistical: each comparison (GRPO-mutant vs
SFT kill rate, GRPO-speed vs GRPO-mutant runtime, GKD vs SFT) is a paired bootstrap 95% interval
over the held-out instances (:mod:`fastdistill.evaluation.stats`), and the summary prints the
machine, versions and seed. ``benchmarks/bench_learning.py`` repeats the pipeline over seeds.

The package: :mod:`~fastdistill.demo.families` (the task: function families, instance generation,
training rows), :mod:`~fastdistill.demo.config` (:class:`DemoConfig`), :mod:`~fastdistill.demo.run`
(the pipeline, :func:`run_demo`), :mod:`~fastdistill.demo.report` (report.md, the plot, the summary
table) and :mod:`~fastdistill.demo.cli` (``fastdistill demo``).
"""

from __future__ import annotations

from fastdistill.demo.cli import main
from fastdistill.demo.config import DemoConfig
from fastdistill.demo.families import (
    FAMILIES,
    LOOP_RANGE,
    NAME_WORDS,
    STYLES,
    SYLLABLES,
    family_examples,
    family_test,
    family_words,
    public_names,
    rename_public_names,
)
from fastdistill.demo.report import (
    COMPARISONS,
    STUDENTS,
    acceptance,
    comparisons,
    environment,
    shape_of_tests,
    summary_table,
)
from fastdistill.demo.run import DemoFailed, check_kill_rates, run_demo

__all__ = [
    "COMPARISONS",
    "FAMILIES",
    "LOOP_RANGE",
    "NAME_WORDS",
    "STUDENTS",
    "STYLES",
    "SYLLABLES",
    "DemoConfig",
    "DemoFailed",
    "acceptance",
    "check_kill_rates",
    "comparisons",
    "environment",
    "family_examples",
    "family_test",
    "family_words",
    "main",
    "public_names",
    "rename_public_names",
    "run_demo",
    "shape_of_tests",
    "summary_table",
]
