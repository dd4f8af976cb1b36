"""Prompt templates for the three tasks a test-writing student learns, as chat messages.

Each function returns a list of ``{"role", "content"}`` dicts (TRL's conversational format), so it
goes straight into ``tokenizer.apply_chat_template`` or a dataset's ``prompt`` column.
"""

from __future__ import annotations

__all__ = ["SYSTEM_PROMPT", "generate_tests_prompt", "fix_tests_prompt", "diagnose_failure_prompt", "TEMPLATES"]

SYSTEM_PROMPT = "You are an expert Python engineer who writes small, fast, thorough pytest test files."


def _fence(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def generate_tests_prompt(code: str, module_name: str = "solution", system: bool = True) -> list[dict]:
    """Ask for a pytest file that tests ``code``, importable as ``module_name``."""
    user = (
        f"Write pytest unit tests for the following Python module `{module_name}`. "
        f"Import what you test with `from {module_name} import ...`. Cover edge cases so that any bug "
        "would make a test fail. Answer with one Python code block.\n\n" + _fence(code)
    )
    return ([{"role": "system", "content": SYSTEM_PROMPT}] if system else []) + [{"role": "user", "content": user}]


def fix_tests_prompt(code: str, tests: str, failure: str, module_name: str = "solution",
                     system: bool = True) -> list[dict]:
    """Ask to repair a test file that fails on correct code, given the failure output."""
    user = (
        f"These pytest tests for module `{module_name}` fail although the module is correct. "
        "Fix the tests and answer with the whole corrected test file in one Python code block.\n\n"
        f"Module:\n{_fence(code)}\n\nTests:\n{_fence(tests)}\n\nFailure:\n```\n{failure.rstrip()}\n```"
    )
    return ([{"role": "system", "content": SYSTEM_PROMPT}] if system else []) + [{"role": "user", "content": user}]


def diagnose_failure_prompt(
    code: str, tests: str, failure: str, module_name: str = "solution", system: bool = True
) -> list[dict]:
    """Ask whether a failure is a bug in the code or in the tests, and why."""
    user = (
        f"A pytest run of these tests against module `{module_name}` failed. Say whether the bug is in the "
        "module or in the tests, point to the line, and explain the cause in two sentences.\n\n"
        f"Module:\n{_fence(code)}\n\nTests:\n{_fence(tests)}\n\nFailure:\n```\n{failure.rstrip()}\n```"
    )
    return ([{"role": "system", "content": SYSTEM_PROMPT}] if system else []) + [{"role": "user", "content": user}]


TEMPLATES = {
    "generate_tests": generate_tests_prompt,
    "fix_tests": fix_tests_prompt,
    "diagnose_failure": diagnose_failure_prompt,
}
