"""What the recipes share: the script arguments and the dataset builders.

``dataset`` is a JSON/JSONL file or the word ``examples`` (the bundled examples of
``fastdistill.data.examples``, each turned into a "write tests for this code" prompt).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RecipeArguments:
    """Arguments of every recipe that are not training or model arguments.

    Args:
        dataset (`str`, defaults to `"examples"`):
            A ``.json``/``.jsonl`` file, or ``examples`` for the bundled examples.
        examples_split (`str`, defaults to `"train"`):
            With ``dataset=examples``: ``train``, ``held_out`` or ``all``.
        max_train_samples (`int`, *optional*):
            Keep only the first N rows (quick runs, smoke tests).
    """

    dataset: str = field(default="examples", metadata={"help": "JSON/JSONL file, or 'examples' (bundled)."})
    examples_split: str = field(default="train", metadata={"help": "'train', 'held_out' or 'all' (examples only)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N rows."})


def _examples(split: str) -> list[dict]:
    from fastdistill.data.examples import load_examples, split_examples

    if split == "all":
        return load_examples()
    train, held_out = split_examples()
    if split not in ("train", "held_out"):
        raise ValueError(f"examples_split must be 'train', 'held_out' or 'all', got {split!r}")
    return train if split == "train" else held_out


def _truncate(dataset, n: int | None):
    return dataset.select(range(min(n, len(dataset)))) if n else dataset


def supervised_dataset(args: RecipeArguments):
    """Prompt/completion rows for SFT and GKD: the reference tests are the completion."""
    from fastdistill.data import generate_tests_prompt, load_supervised_dataset

    if args.dataset == "examples":
        rows = [
            {
                "prompt": generate_tests_prompt(ex["code"], module_name=ex["module_name"]),
                "completion": f"```python\n{ex['tests'].rstrip()}\n```",
                "code": ex["code"],
            }
            for ex in _examples(args.examples_split)
        ]
        return _truncate(load_supervised_dataset(rows), args.max_train_samples)
    return _truncate(load_supervised_dataset(args.dataset), args.max_train_samples)


def prompt_dataset(args: RecipeArguments, code_column: str = "code"):
    """Prompt + code rows for GRPO: the rewards run the generated tests against ``code_column``."""
    from datasets import Dataset, load_dataset

    from fastdistill.data import generate_tests_prompt

    if args.dataset == "examples":
        rows = [
            {"prompt": generate_tests_prompt(ex["code"], module_name=ex["module_name"]), code_column: ex["code"]}
            for ex in _examples(args.examples_split)
        ]
        dataset = Dataset.from_list(rows)
    else:
        dataset = load_dataset("json", data_files=args.dataset, split="train")
    missing = {"prompt", code_column} - set(dataset.column_names)
    if missing:
        raise ValueError(f"{args.dataset}: GRPO needs columns 'prompt' and {code_column!r}; missing {sorted(missing)}")
    return _truncate(dataset, args.max_train_samples)
