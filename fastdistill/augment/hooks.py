"""Dataset-row hooks that apply :func:`robust_augment` (for ``SFTConfig.augment_fn``)."""

from __future__ import annotations

from fastdistill.augment import robust_augment

__all__ = ["robust_augment_example"]


def _replace_in_prompt(prompt, old: str, new: str):
    if isinstance(prompt, str):
        return prompt.replace(old.rstrip(), new.rstrip())
    return [{**m, "content": m["content"].replace(old.rstrip(), new.rstrip())} for m in prompt]


def robust_augment_example(example: dict, seed: int, code_column: str = "code", prompt_column: str = "prompt") -> dict:
    """Rewrite the row's code with :func:`robust_augment` and put the rewrite into its prompt too.

    Matches the SFT augmentation hook signature ``fn(example, seed) -> dict of changed fields``, so
    ``SFTConfig(augment_fn="fastdistill.augment.hooks:robust_augment_example")`` trains the student on
    renamed / re-commented versions of the code under test with the same reference tests (public names
    are kept, so the tests stay valid). Rows whose code does not parse are left unchanged.
    """
    code = example.get(code_column)
    if not isinstance(code, str):
        raise ValueError(f"robust_augment_example needs a string column {code_column!r}; row has {sorted(example)}")
    try:
        new_code = robust_augment(code, seed=seed)
    except SyntaxError:
        return {}
    changes = {code_column: new_code}
    if prompt_column in example:
        changes[prompt_column] = _replace_in_prompt(example[prompt_column], code, new_code)
    return changes
