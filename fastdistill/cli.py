"""The ``fastdistill`` command line: ``curate``, ``annotate``, ``eval``, ``generate``, ``demo``.

Each sub-command lives next to the code it drives (``fastdistill/<concern>/cli.py`` exposes
``main(argv) -> int``); this module only dispatches, so ``fastdistill curate`` never imports torch.

Errors are turned into messages in one place, :func:`guarded`: a user error (a bad config, file,
row or argument) prints one line naming the file / line / row / field and exits with status 2; an
unexpected error prints one line and exits 1. ``--debug`` (anywhere on the command line) shows
the traceback instead.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
from collections.abc import Callable

# sub-command -> (module, one-line help)
COMMANDS = {
    "curate": ("fastdistill.curation.cli", "run a declared list of curation steps and the quality gate"),
    "annotate": ("fastdistill.teacher.cli", "add teacher completions / log-probs to a dataset"),
    "eval": ("fastdistill.evaluation.cli", "evaluate a student: mutation kill rate, pass rate, speed"),
    "generate": ("fastdistill.evaluation.cli", "batch inference to JSONL"),
    "demo": ("fastdistill.demo.cli", "offline end-to-end demo: curate -> SFT -> GKD -> GRPO -> eval"),
}

#: set by ``--debug``: :func:`guarded` re-raises instead of printing a one-line message
DEBUG = False


def _usage() -> str:
    lines = ["usage: fastdistill [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `fastdistill <command> --help` for the options of a command.",
              "--debug shows the Python traceback of an error (see docs/troubleshooting.md)."]
    return "\n".join(lines)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "your input is wrong", not "fastdistill is broken"."""
    from fastdistill.validation import UserError

    types: list[type[BaseException]] = [UserError, ValueError, KeyError, LookupError, FileNotFoundError,
                                        IsADirectoryError, NotADirectoryError, PermissionError, re.error,
                                        json.JSONDecodeError, UnicodeError]
    try:
        import yaml

        types.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        pass
    return tuple(types)


def error_message(exc: BaseException) -> str:
    """The one-line (or one-block) text shown for ``exc``: its message, without KeyError's quotes."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]
    elif isinstance(exc, UnicodeDecodeError):
        text = f"not valid UTF-8 text ({exc.reason} at byte {exc.start})"
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text


def guarded(command: str, fn: Callable[[], int | None], *, debug: bool | None = None) -> int:
    """Run ``fn()`` (a sub-command's work) and turn errors into a message and an exit status.

    User errors (:class:`fastdistill.validation.UserError`, ``ValueError``, ``KeyError``, missing
    files, bad YAML/JSON/regex, undecodable text) exit 2; anything else exits 1 with the exception
    type named; a sandbox that cannot start (:class:`fastdistill.rewards.SandboxUnavailableError`) exits 3.
    With ``debug`` (default: the ``--debug`` flag) the exception propagates with its
    traceback. The only place where the command line turns exceptions into messages.
    """
    debug = DEBUG if debug is None else debug
    try:
        return _run_reporting_sandbox_failures(command, fn, debug)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"fastdistill {command}: interrupted\n")
        return 130
    except _user_error_types() as exc:
        if debug:
            raise
        logging.getLogger("fastdistill").debug("user error", exc_info=True)
        sys.stderr.write(f"fastdistill {command}: error: {error_message(exc)}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - the one place that turns crashes into a message
        if debug:
            raise
        sys.stderr.write(f"fastdistill {command}: internal error: {type(exc).__name__}: {error_message(exc)}\n"
                         f"  (rerun with --debug for the traceback; see docs/troubleshooting.md)\n")
        return 1


def _run_reporting_sandbox_failures(command: str, fn: Callable[[], int | None], debug: bool) -> int:
    """``fn()``; a sandbox that cannot run exits 3 (nothing was scored), whatever else it is."""
    from fastdistill.rewards.sandbox import SandboxUnavailableError

    try:
        return int(fn() or 0)
    except SandboxUnavailableError as exc:
        if debug:
            raise
        sys.stderr.write(f"fastdistill {command}: error: the test sandbox cannot run, nothing was scored: {exc}\n")
        return 3


def main(argv: list[str] | None = None) -> int:
    global DEBUG
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        DEBUG = True
        argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.DEBUG if DEBUG else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in {"-h", "--help"}:
        sys.stdout.write(_usage() + "\n")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from fastdistill.validation import closest

        sys.stderr.write(f"fastdistill: unknown command {command!r}{closest(command, COMMANDS)}\n\n{_usage()}\n")
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return guarded(command, lambda: module.main(rest, command=command))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
