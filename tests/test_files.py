"""fastdistill.files: atomic output files and the input-file loader."""

import os

import pytest

from fastdistill.evaluation.generation import read_jsonl
from fastdistill.files import JsonlLineError, atomic_open, atomic_path, iter_jsonl, load_dataset_file, write_json_atomic
from fastdistill.validation import UserError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    write_json_atomic(target, {"good": True})
    os.chmod(target, 0o640)
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write('{"half": ')
        raise RuntimeError("crash mid-write")
    assert target.read_text() == '{\n  "good": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    write_json_atomic(target, {"good": 2})
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)  # the replaced file's permissions are kept


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "sub" / "data.parquet") as tmp:
        assert tmp.suffix == ".parquet" and tmp.parent == tmp_path / "sub"
        tmp.write_bytes(b"x")
    assert (tmp_path / "sub" / "data.parquet").read_bytes() == b"x"


def test_jsonl_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"q": "a"}\n{"q": "b"}\n')
    assert list(load_dataset_file(path)["q"]) == ["a", "b"]
    assert read_jsonl(path) == [{"q": "a"}, {"q": "b"}]


def test_loader_errors_name_the_field_and_file(tmp_path):
    with pytest.raises(UserError, match="input.path: .*nope.jsonl does not exist"):
        load_dataset_file(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="cannot infer the format"):
        load_dataset_file(tmp_path / "x.csv")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(UserError, match="cannot read .*bad.parquet as Parquet"):
        load_dataset_file(tmp_path / "bad.parquet")


@pytest.mark.parametrize("content, line_no",
                         [(b'{"q": 1}\n\n{"q": \n', 3), (b'{"q": "\xff"}\n', 1), (b'{"q": 1}\n[1]\n', 2)])
def test_one_jsonl_parser_behind_both_readers(tmp_path, content, line_no):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(JsonlLineError) as err:
        list(iter_jsonl(path))
    assert err.value.line_no == line_no and str(err.value).startswith(f"line {line_no} ")
    with pytest.raises(UserError, match=f"bad.jsonl: line {line_no} "):
        load_dataset_file(path)
    with pytest.raises(ValueError, match=f"bad.jsonl: line {line_no} "):
        read_jsonl(path)
