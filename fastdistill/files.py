"""Output files that are never lost: write to a temporary file next to the target, rename on success.

Every file fastdistill writes for a user (curated data, manifests and reports, annotated data and
its summary, evaluation results, generations) goes through :func:`atomic_path` (or its small
wrappers), so a run that fails half-way leaves any previous output exactly as it was, and a
reader never sees a half-written file. The rename is :func:`os.replace`, atomic on POSIX and
Windows when the temporary file is on the same file system (it is: same directory).

It also holds the one JSON-lines reader, :func:`iter_jsonl`, that every loader of user files
shares, so a broken line is reported the same way wherever it is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_open", "write_text_atomic", "write_json_atomic", "iter_jsonl", "JsonlLineError"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on error it is removed.

    For writers that want a file name (``Dataset.to_json``, ``to_parquet``). The parent folder is
    created. The temporary name keeps the suffix, so writers that look at it pick the same format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if path.exists():  # keep the permissions of the file being replaced
            with contextlib.suppress(OSError):
                os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            with contextlib.suppress(OSError):
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """``open(path, mode)`` that writes a temporary file and renames it over ``path`` on success."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs) -> Path:
    """Write ``obj`` as indented JSON (plus a newline) to ``path`` atomically; returns the path."""
    dumps_kwargs.setdefault("indent", 2)
    return write_text_atomic(path, json.dumps(obj, **dumps_kwargs) + "\n")


class JsonlLineError(ValueError):
    """A line of a JSON-lines file that is not one JSON object: not UTF-8, not JSON, or another JSON value.

    ``str(err)`` reads ``line 7 is not valid JSON (Expecting value, column 3)``; ``line_no`` is the
    1-based line number (blank lines counted).
    """

    def __init__(self, line_no: int, problem: str, detail: str, position: str = ""):
        self.line_no, self.problem, self.detail, self.position = line_no, problem, detail, position
        super().__init__(self.describe())

    def describe(self, position: bool = True) -> str:
        """``line N <problem> (<detail>)``; ``position=False`` leaves out where in the line (column, byte offset)."""
        return f"line {self.line_no} {self.problem} ({self.detail}{self.position if position else ''})"


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the JSON object on each non-blank line of a JSON-lines file, in order.

    The file is read as bytes one line at a time (no line is kept after it is yielded); a UTF-8 byte
    order mark may start it. The first line that is not UTF-8, not JSON, or not a JSON object raises
    :class:`JsonlLineError`.
    """
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a BOM may start the file
            except UnicodeDecodeError as err:
                raise JsonlLineError(line_no, "is not valid UTF-8", f"{err.reason} at byte {err.start}",
                                     " of the line") from None
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise JsonlLineError(line_no, "is not valid JSON", err.msg, f", column {err.colno}") from None
            if not isinstance(value, dict):
                raise JsonlLineError(line_no, f"is a JSON {type(value).__name__}, not an object", "one row per line")
            yield value


def _first_bad_jsonl_line(path: Path) -> str | None:
    """Where a JSONL file first stops being JSON lines (``"line N ..."``), or None if every line parses."""
    try:
        for _ in iter_jsonl(path):
            pass
    except JsonlLineError as err:
        return str(err)
    return None


def load_dataset_file(path: str | os.PathLike, fmt: str = "auto", *, where: str = "input.path"):
    """Load a ``.jsonl``/``.json``, ``.parquet`` file or a ``save_to_disk`` folder as a ``datasets.Dataset``.

    Problems a user can fix raise :class:`fastdistill.validation.UserError` naming ``where``, the
    file and (for JSON lines) the line: a missing file, an empty file, a line that is not JSON or
    not UTF-8, an unknown format. A ``DatasetDict`` folder is returned as is.
    """
    import datasets

    from fastdistill.validation import UserError

    path = Path(path)
    if not path.exists():
        raise UserError(f"{where}: {path} does not exist")
    if fmt == "auto":
        if path.is_dir():
            fmt = "datasets"
        elif path.suffix in (".jsonl", ".json"):
            fmt = "jsonl"
        elif path.suffix == ".parquet":
            fmt = "parquet"
        else:
            raise UserError(f"{where}: cannot infer the format of {path} from its suffix; use .jsonl, .json or "
                            ".parquet (or a folder saved by Dataset.save_to_disk)")
    if fmt in ("jsonl", "parquet") and path.is_dir():
        raise UserError(f"{where}: {path} is a folder, not a {fmt} file")
    if fmt in ("jsonl", "parquet") and path.stat().st_size == 0:
        raise UserError(f"{where}: {path} is empty (no rows)")
    if fmt == "jsonl":
        with open(path, "rb") as handle:
            if not any(line.strip() for line in handle):
                raise UserError(f"{where}: {path} holds only blank lines (no rows)")
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        if path.suffix == ".jsonl" or not head.startswith(b"["):  # a .json array is checked by datasets
            bad = _first_bad_jsonl_line(path) if path.stat().st_size < (1 << 23) else None
            if bad:  # small files are checked up front; a big one only when datasets cannot read it
                raise UserError(f"{where}: {path}: {bad}")
        try:
            return datasets.Dataset.from_json(str(path))
        except Exception as err:  # datasets wraps every reader error in DatasetGenerationError
            bad = _first_bad_jsonl_line(path)
            raise UserError(f"{where}: cannot read {path}: {bad or err}") from err
    if fmt == "parquet":
        try:
            return datasets.Dataset.from_parquet(str(path))
        except Exception as err:
            raise UserError(f"{where}: cannot read {path} as Parquet: {err}") from err
    if fmt == "datasets":
        try:
            return datasets.load_from_disk(str(path))
        except Exception as err:
            raise UserError(f"{where}: cannot load {path} as a saved dataset: {err}") from err
    raise UserError(f"{where}: unknown format {fmt!r} (jsonl, parquet, datasets)")
