"""Reward engine: sandboxed pytest execution, mutation testing and TRL reward functions.

Imports no torch. See :mod:`fastdistill.rewards.sandbox` for the isolation model and
:mod:`fastdistill.rewards.mutation` for how mutants are run quickly.
"""

from fastdistill.rewards.mutation import (
    Mutant,
    MutantOutcome,
    MutationResult,
    clear_cache,
    generate_mutants,
    mutation_score,
    mutation_scores,
)
from fastdistill.rewards.functions import (
    PRESETS,
    CompositeReward,
    MutantKillReward,
    RewardError,
    RobustnessReward,
    SpeedStabilityReward,
    composite_reward,
    extract_test_code,
    make_composite_reward,
    mutant_kill_reward,
    robustness_reward,
    speed_stability_reward,
)
from fastdistill.rewards.settings import DEFAULT_SETTINGS, SandboxSettings
from fastdistill.rewards.sandbox import (
    SandboxUnavailableError,
    TestOutcome,
    TestRun,
    close_idle_workers,
    run_tests,
    run_tests_many,
    sandbox_capabilities,
)

__all__ = [
    "PRESETS", "CompositeReward", "MutantKillReward", "RobustnessReward", "SpeedStabilityReward", "composite_reward",
    "extract_test_code", "make_composite_reward", "mutant_kill_reward", "robustness_reward", "speed_stability_reward",
    "Mutant", "MutantOutcome", "MutationResult", "TestOutcome", "TestRun", "clear_cache", "generate_mutants",
    "mutation_score", "mutation_scores", "run_tests", "run_tests_many", "close_idle_workers", "sandbox_capabilities",
    "SandboxUnavailableError", "RewardError", "SandboxSettings", "DEFAULT_SETTINGS",
]
