"""The ``fastdistill`` command line: ``curate``, ``annotate``, ``eval``, ``generate``, ``demo``.

Each sub-command lives next to the code it drives (``fastdistill/<concern>/cli.py`` exposes
``main(argv) -> int``); this module only dispatches, so ``fastdistill curate`` never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import sys

# sub-command -> (module, one-line help)
COMMANDS = {
    "curate": ("fastdistill.curation.cli", "run a declared list of curation steps and the quality gate"),
    "annotate": ("fastdistill.teacher.cli", "add teacher completions / log-probs to a dataset"),
    "eval": ("fastdistill.evaluation.cli", "evaluate a student: mutation kill rate, pass rate, speed"),
    "generate": ("fastdistill.evaluation.cli", "batch inference to JSONL"),
    "demo": ("fastdistill.demo.cli", "offline end-to-end demo: curate -> SFT -> GKD -> GRPO -> eval"),
}


def _usage() -> str:
    lines = ["usage: fastdistill <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `fastdistill <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help"}:
        sys.stdout.write(_usage() + "\n")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"fastdistill: unknown command {command!r}\n\n{_usage()}\n")
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest, command=command) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
