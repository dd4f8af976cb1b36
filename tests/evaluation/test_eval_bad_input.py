"""``fastdistill eval`` with bad input: one message naming file / line / row, exit 2, old output kept."""

import json
import math

import pytest

from fastdistill.evaluation.cli import main
from fastdistill.evaluation.generation import GenerationSettings, read_jsonl, write_jsonl
from fastdistill.evaluation.metrics import score_mutation, score_speed


@pytest.mark.parametrize("content, expected", [
    (json.dumps({"completion": "def test_a(): pass"}) + "\n", "row 0: missing field 'code'"),
    (json.dumps({"code": None, "completion": "x"}) + "\n", "row 0: field 'code' must be a non-empty string"),
    (json.dumps({"code": "x = 1", "completion": "x"}) + "\n" + json.dumps({"code": "y"}) + "\n",
     "row 1: missing field 'completion'"),
    ("", "the file is empty"),
    ('{"code": "x"\n', "line 1 is not valid JSON"),
    (b'{"code": "\xff", "completion": "x"}\n', "line 1 is not valid UTF-8"),
    ("[1]\n", "line 1 is a JSON list"),
])
def test_bad_generations_exit_2_naming_file_and_row(tmp_path, capsys, content, expected):
    gen = tmp_path / "gen.jsonl"
    gen.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "eval.json"
    out.write_text('{"previous": "result"}')
    assert main(["--generations", str(gen), "--out", str(out)], command="eval") == 2
    err = capsys.readouterr().err
    assert expected in err and "gen.jsonl" in err and "Traceback" not in err
    assert out.read_text() == '{"previous": "result"}'  # the failed run left the old output alone


def test_bad_numbers_refused_together(tmp_path, capsys):
    gen = tmp_path / "gen.jsonl"
    write_jsonl([{"code": "x = 1", "completion": "no tests"}], gen)
    assert main(["--generations", str(gen), "--repeats", "0", "--max-mutants", "-3", "--temperature", "nan"],
                command="eval") == 2
    err = capsys.readouterr().err
    assert "--repeats: must be >= 1" in err and "--max-mutants" in err and "--temperature" in err


def test_debug_shows_the_traceback(tmp_path):
    gen = tmp_path / "gen.jsonl"
    gen.write_text(json.dumps({"completion": "x"}) + "\n")
    with pytest.raises(ValueError, match="missing field 'code'"):
        main(["--generations", str(gen), "--debug"], command="eval")


def test_library_scoring_refuses_rows_without_code():
    with pytest.raises(ValueError, match="row 1: missing field 'code'"):
        score_mutation([{"code": "x = 1", "completion": "c"}, {"completion": "c"}])
    with pytest.raises(ValueError, match="repeats"):
        score_speed([{"code": "x = 1", "completion": "c"}], repeats=0)


@pytest.mark.parametrize("kwargs", [dict(temperature=math.nan), dict(top_p=0), dict(max_new_tokens=0),
                                    dict(batch_size=1.5), dict(repetition_penalty=math.inf)])
def test_generation_settings_refuse_bad_values(kwargs):
    with pytest.raises(ValueError):
        GenerationSettings(**kwargs)


def test_read_write_jsonl_round_trip_and_atomic(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    write_jsonl([{"a": "é"}, {"a": None}], path)
    assert read_jsonl(path) == [{"a": "é"}, {"a": None}]

    def exploding():
        yield {"a": 1}
        raise RuntimeError("generation crashed")

    with pytest.raises(RuntimeError):
        write_jsonl(exploding(), path)
    assert read_jsonl(path) == [{"a": "é"}, {"a": None}]  # not truncated
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]  # no temporary file left
