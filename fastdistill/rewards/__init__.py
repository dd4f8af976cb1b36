"""Reward engine: sandboxed pytest execution, mutation testing and TRL reward functions.

Imports no torch. See :mod:`fastdistill.rewards.sandbox` for the isolation model.
"""

from fastdistill.rewards.sandbox import TestOutcome, TestRun, run_tests, sandbox_capabilities

__all__ = ["TestOutcome", "TestRun", "run_tests", "sandbox_capabilities"]
