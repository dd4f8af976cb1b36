"""The demo's task: synthetic function families, their reference tests, the train / held-out split, and
the prompt/completion rows (with optional renamed copies) the models are trained on."""

from __future__ import annotations

import random
import re

# words the renaming draws new public names from (also in the tokenizer's corpus)
NAME_WORDS = (
    "count parse merge find split join sort make get check load scan fold pick sum total value item text word "
    "list pair key node line path range block chunk token score grade index size limit shift swap trim pack map "
    "table queue cache buffer entry digit char string number record field group level depth width order stamp window"
).split()


# ------------------------------------------------------------------------------------------------
# synthetic function families (the task the tiny models can generalise on)
# ------------------------------------------------------------------------------------------------

# Family instances are named ``<family>_<word>`` with a made-up word of two syllables (one token
# each in the demo's tokenizer): so many distinct names that a model cannot memorise them and has to
# copy the name from the prompt. Held-out words are combinations no training instance uses.
SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")


def family_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct made-up words of two :data:`SYLLABLES`, deterministic for ``seed``."""
    rng, words = random.Random(seed), []
    seen = set()
    while len(words) < n:
        word = "".join(rng.choice(SYLLABLES) for _ in range(2))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


# name prefix: code template, strong asserts, weak asserts, the check of the loop ({n}: function name,
# {w}: word, {c}: constant; the loop variable is v). Constants in tests are written as expressions of the
# constant in the code ({c} + 1), so a test is written by copying tokens from the prompt, without
# arithmetic. The loop's check holds for every constant a family draws (10..99): it needs the name from
# the prompt but no constant.
FAMILIES = {
    "above": ("def {n}(x):\n    return x > {c}\n",
              ["assert {n}({c} + 1)", "assert not {n}({c})"], ["assert {n}({c} + 1)"],
              "{n}(v + 100) and not {n}(9 - v)"),
    "below": ("def {n}(x):\n    return x < {c}\n",
              ["assert {n}({c} - 1)", "assert not {n}({c})"], ["assert {n}({c} - 1)"],
              "{n}(9 - v) and not {n}(v + 100)"),
    "add": ("def {n}(x):\n    return x + {c}\n",
            ["assert {n}(0) == {c}", "assert {n}({c}) == {c} + {c}"], ["assert {n}(0) > 0"],
            "{n}(v) > v + 9"),
    "clamp": ("def {n}(x):\n    return min(x, {c})\n",
              ["assert {n}({c} + 1) == {c}", "assert {n}({c}) == {c}"], ["assert {n}(0) == 0"],
              "{n}(v + 100) > 9 and {n}(9 - v) == 9 - v"),
    "starts": ("def {n}(text):\n    return text.startswith(\"{w}\")\n",
               ["assert {n}(\"{w}\")", "assert not {n}(\"\")"], ["assert {n}(\"{w}\")"],
               "{n}(\"{w}\" + str(v)) and not {n}(str(v))"),
    "has": ("def {n}(items):\n    return {c} in items\n",
            ["assert {n}([{c}])", "assert not {n}([{c} + 1])"], ["assert not {n}([])"],
            "{n}([v + 100]) is False and {n}([9 - v]) is False"),
}
# reference-test styles of the training corpus: weak (one check that misses boundary mutants),
# strong (boundary checks: kill every mutant, but need the constant copied from the code, which the
# demo's tiny students do not manage for an unseen constant) and loop (one `assert all(...)` over
# LOOP_RANGE inputs of a check that needs no constant: kills what such a check can, more than weak for
# clamp, membership and prefix, and runs ~10-20k calls, a few ms). The loop style is what gives the two
# GRPO branches something to trade: the mutant reward prefers it where it kills more, the speed reward
# does not.
STYLES = {"weak": 0.45, "strong": 0.1, "loop": 0.45}
LOOP_RANGE = 9999


def family_test(family: str, word: str, const: int, style: str) -> str:
    """The reference pytest file of one family instance in one style (``weak``, ``strong`` or ``loop``)."""
    _, strong, weak, loop = FAMILIES[family]
    name = f"{family}_{word}"
    head = f"from solution import {name}\n\n\n"
    if style == "loop":
        check = loop.format(n=name, w=word, c=const)
        return head + f"def test_{name}():\n    assert all({check} for v in range({LOOP_RANGE}))\n"
    asserts = [a.format(n=name, w=word, c=const) for a in (weak if style == "weak" else strong)]
    return head + f"def test_{name}():\n" + "".join(f"    {a}\n" for a in asserts)


def family_examples(seed: int = 0, n_train: int = 360, n_held_out: int = 24,
                    styles: dict | None = None, n_extra: int = 0):
    """Generated (train, held_out) family instances: rows with name, family, style, code, tests.

    Words and constants (10..99) are split before anything is drawn: a held-out instance has a word
    no training instance uses and a constant no training instance uses. Training tests are drawn
    from ``styles`` (default :data:`STYLES`); held-out rows carry the strong reference tests, which
    no model sees (evaluation only shows the code). With ``n_extra`` a third list is returned:
    further instances drawn like the training ones (training-pool constants, fresh words that are
    neither training nor held-out words), used as GRPO prompts the SFT data never showed.
    """
    rng = random.Random(seed)
    styles = styles or STYLES
    words = family_words(n_train + n_held_out + n_extra, seed)
    consts = list(range(10, 100))
    rng.shuffle(consts)
    n_held_c = len(consts) // 5
    splits = {"held_out": (words[:n_held_out], consts[:n_held_c]),
              "train": (words[n_held_out:n_held_out + n_train], consts[n_held_c:]),
              "extra": (words[n_held_out + n_train:], consts[n_held_c:])}
    out = {}
    for split, n in (("train", n_train), ("held_out", n_held_out), ("extra", n_extra)):
        split_words, split_consts = splits[split]
        rows = []
        for i in range(n):
            family = list(FAMILIES)[i % len(FAMILIES)] if split == "held_out" else rng.choice(list(FAMILIES))
            word, const = split_words[i], rng.choice(split_consts)
            style = rng.choices(list(styles), weights=list(styles.values()))[0] if split == "train" else "strong"
            rows.append({"name": f"{family}_{word}_{const}", "family": family, "style": style,
                         "code": FAMILIES[family][0].format(n=f"{family}_{word}", w=word, c=const),
                         "tests": family_test(family, word, const, style)})
        out[split] = rows
    return (out["train"], out["held_out"]) + ((out["extra"],) if n_extra else ())


# ------------------------------------------------------------------------------------------------
# training rows: prompt/completion pairs (optionally with renamed copies)
# ------------------------------------------------------------------------------------------------

def public_names(tests: str, module_name: str = "solution") -> list[str]:
    """Names the test file imports from the module under test (``from solution import a, b``)."""
    names = []
    for match in re.finditer(rf"^from {re.escape(module_name)} import (.+)$", tests, re.M):
        names += [n.strip() for n in match.group(1).split(",") if n.strip()]
    return names


def rename_public_names(code: str, tests: str, seed: int) -> tuple[str, str]:
    """Rename the imported public names consistently in ``code`` and ``tests`` (semantics preserved).

    New names are built from :data:`NAME_WORDS` (snake_case for functions, CamelCase for classes).
    A name is replaced wherever it is not part of a longer alphanumeric word, so ``test_clamp``
    becomes ``test_<new>`` too.
    """
    rng = random.Random(seed)
    taken = set(re.findall(r"\w+", code + tests))
    for name in sorted(public_names(tests), key=len, reverse=True):
        while True:
            parts = [rng.choice(NAME_WORDS) for _ in range(rng.choice((1, 2, 2, 3)))]
            new = "".join(p.capitalize() for p in parts) if name[:1].isupper() else "_".join(parts)
            if new not in taken:
                break
        taken.add(new)
        pattern = re.compile(r"(?<![A-Za-z0-9])" + re.escape(name) + r"(?![A-Za-z0-9])")
        code, tests = pattern.sub(new, code), pattern.sub(new, tests)
    return code, tests


def _prompt(code: str) -> list[dict]:
    from fastdistill.data import generate_tests_prompt

    return generate_tests_prompt(code, module_name="solution", system=False)


def _with_renames(pairs: list[dict], renames: int, seed: int) -> list[dict]:
    """Each (name, code, tests) row plus ``renames`` renamed copies, as prompt/completion rows."""
    rows = []
    for i, pair in enumerate(pairs):
        variants = [(pair["code"], pair["tests"])]
        variants += [rename_public_names(pair["code"], pair["tests"], seed * 100_003 + i * 101 + k + 1)
                     for k in range(renames)]
        for k, (code, tests) in enumerate(variants):
            rows.append({"name": pair["name"] + ("" if k == 0 else f"~{k}"), "code": code, "prompt": _prompt(code),
                         "completion": tests})
    return rows


def _sft_dataset(rows: list[dict]):
    from fastdistill.data import load_supervised_dataset

    return load_supervised_dataset([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
