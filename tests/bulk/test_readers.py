"""Input readers: what counts as a row in each format, counting by the reading rule, resuming."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ember.bulk.errors import InputUnreadable
from ember.bulk.formats import input_format_for, output_format_for
from ember.bulk.readers import Row, open_reader


def texts_and_ids(rows: list[Row]) -> list[tuple[str, object]]:
    return [(row.text, row.id) for row in rows]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xef\xbb\xbfalpha\n\nbeta\r\ngamma", ["alpha", "", "beta", "gamma"]),
        (b"alpha\nbeta\n", ["alpha", "beta"]),
        (b"\n\n", ["", ""]),
        (b"", []),
        (b"caf\xc3\xa9 \xe2\x80\x94 na\xc3\xafve\r\n", ["café — naïve"]),
    ],
)
def test_text_rows_are_lines_blank_ones_included(
    tmp_path: Path, content: bytes, expected: list[str]
) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    reader = open_reader(path, "txt", "text")
    assert [row.text for row in reader.rows()] == expected
    assert reader.count() == len(expected)
    assert not reader.has_ids


def test_text_rows_resume_after_skipped_rows(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_text("".join(f"line {number}\n" for number in range(10)))
    assert [row.text for row in open_reader(path, "txt", "text").rows(skip=7)] == [
        "line 7",
        "line 8",
        "line 9",
    ]


def test_text_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(b"fine\nbad \xff byte\n")
    with pytest.raises(InputUnreadable, match=r"^input\.txt line 2: not UTF-8"):
        list(open_reader(path, "txt", "text").rows())


def test_jsonl_rows_skip_blank_lines_and_keep_ids(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text(
        '{"id": 7, "body": "first"}\n\n   \n{"id": "x-2", "body": null}\n{"body": "third"}\n'
    )
    reader = open_reader(path, "jsonl", "body")
    assert reader.has_ids
    assert reader.count() == 3
    assert texts_and_ids(list(reader.rows())) == [("first", 7), ("", "x-2"), ("third", None)]
    assert texts_and_ids(list(reader.rows(skip=2))) == [("third", None)]


def test_jsonl_starting_with_a_bom_is_read_as_txt_and_csv_are(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": 1.50, "text": "first"}\r\n{"id": 2, "text": "second"}\r\n'
    )
    reader = open_reader(path, "jsonl", "text")
    assert reader.has_ids
    assert reader.count() == 2
    assert texts_and_ids(list(reader.rows())) == [("first", "1.50"), ("second", 2)]


def test_jsonl_without_the_column_says_which_fields_exist(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    path.write_text('{"id": 1, "body": "x"}\n')
    with pytest.raises(
        InputUnreadable,
        match=r"^input\.jsonl line 1: no 'text' field \(fields: 'id', 'body'\); choose the "
        r"field with --column\.$",
    ):
        open_reader(path, "jsonl", "text")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("[1, 2]", "not a JSON object"),
        ("{oops", "not JSON"),
        ('{"text": 5}', "int, not a string"),
        ('{"id": 2}', r"no 'text' field \(fields: 'id'\)\.$"),
    ],
)
def test_jsonl_bad_rows_name_their_line_when_counted_and_read(
    tmp_path: Path, line: str, problem: str
) -> None:
    # Counting, before the model loads, only counted lines: a bad record stopped the run
    # once the rows before it had been embedded.
    path = tmp_path / "input.jsonl"
    path.write_text('{"text": "fine"}\n' + line + '\n{"text": "after"}\n')
    reader = open_reader(path, "jsonl", "text")
    with pytest.raises(InputUnreadable, match=rf"^input\.jsonl line 2: .*{problem}"):
        reader.count()
    with pytest.raises(InputUnreadable, match=rf"^input\.jsonl line 2: .*{problem}"):
        list(reader.rows())


def test_jsonl_ids_keep_every_digit(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    ids = ["99999999999999999999", "18446744073709551615", "-9223372036854775809", "1.50", "7"]
    path.write_text("".join(f'{{"text": "t", "id": {row_id}}}\n' for row_id in ids))
    found = [row.id for row in open_reader(path, "jsonl", "text").rows()]
    assert found == [*ids[:4], 7]


def test_jsonl_float_id_nested_too_deeply_to_read_again_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    deep = "[" * 1020 + "]" * 1020  # within orjson's limit, past the standard library's
    path.write_text('{"text": "t", "id": 1}\n{"text": "t", "id": 1.5, "x": ' + deep + "}\n")
    with pytest.raises(InputUnreadable, match=r"input\.jsonl line 2: nested too deeply"):
        list(open_reader(path, "jsonl", "text").rows())


def test_csv_rows_follow_the_header_and_allow_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "input.csv"
    path.write_text('id,text,other\n1,plain,x\n\n2,"two\nlines, one field",y\n3,,z\n4,last\n')
    reader = open_reader(path, "csv", "text")
    assert reader.has_ids
    assert reader.count() == 4
    assert texts_and_ids(list(reader.rows())) == [
        ("plain", "1"),
        ("two\nlines, one field", "2"),
        ("", "3"),
        ("last", "4"),
    ]
    assert texts_and_ids(list(reader.rows(skip=3))) == [("last", "4")]


@pytest.mark.parametrize(
    ("content", "message", "skip"),
    [
        pytest.param(
            # Read as an empty text, such a row was embedded as "no text"; a JSONL record
            # without the field stops the run, and so does this. Lines count a quoted
            # field's line breaks.
            'id,text,other\n1,"two\r\nlines",x\n\n2\n3,fine,y\n',
            r"^input\.csv line 5: 1 field where the header has 3, so no 'text' field",
            1,
            id="ends before the text field",
        ),
        pytest.param(
            # Most likely a comma in an unquoted text: which field is the text is a guess.
            'id,text\n1,"fine\nhere"\n2,"quoted\nbut",then, more\n',
            r"^input\.csv lines 4-5: 4 fields where the header has 2 \(a comma in an unquoted",
            0,
            id="more fields than the header",
        ),
    ],
)
def test_csv_record_that_does_not_fit_the_header_names_its_lines(
    tmp_path: Path, content: str, message: str, skip: int
) -> None:
    path = tmp_path / "input.csv"
    path.write_text(content)
    reader = open_reader(path, "csv", "text")
    with pytest.raises(InputUnreadable, match=message):
        reader.count()
    with pytest.raises(InputUnreadable, match=message):
        list(reader.rows(skip=skip))


def test_csv_record_short_of_fields_after_the_text_keeps_its_text(tmp_path: Path) -> None:
    # As a JSONL record without an id: the text is there, the id is None.
    path = tmp_path / "input.csv"
    path.write_text("text,other,id\nfirst,x,1\nsecond\n")
    assert texts_and_ids(list(open_reader(path, "csv", "text").rows())) == [
        ("first", "1"),
        ("second", None),
    ]


def test_csv_without_the_column_lists_the_header(tmp_path: Path) -> None:
    path = tmp_path / "input.csv"
    path.write_text("title,body\na,b\n")
    with pytest.raises(InputUnreadable, match="fields: 'title', 'body'"):
        open_reader(path, "csv", "text")


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b"id,te\xffxt\n1,a\n", 1),
        (b"id,text\n1,\xff\xfe\n", 2),
        (b"id,text\n" + b"1,fine\n" * 5000 + b"2,caf\xe9\n", 5002),  # past the first block
    ],
    ids=["header", "record", "far-record"],
)
def test_csv_that_is_not_utf8_names_the_line(tmp_path: Path, content: bytes, line: int) -> None:
    path = tmp_path / "input.csv"
    path.write_bytes(content)
    with pytest.raises(InputUnreadable, match=rf"input\.csv line {line}: not UTF-8"):
        list(open_reader(path, "csv", "text").rows())


def test_parquet_rows_resume_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "input.parquet"
    table = pa.table(
        {"id": list(range(10)), "text": [f"row {n}" if n != 4 else None for n in range(10)]}
    )
    pq.write_table(table, path, row_group_size=3)
    reader = open_reader(path, "parquet", "text")
    assert reader.has_ids
    assert reader.count() == 10
    rows = texts_and_ids(list(reader.rows()))
    assert rows[3:6] == [("row 3", 3), ("", 4), ("row 5", 5)]
    for skip in range(11):
        assert texts_and_ids(list(reader.rows(skip=skip))) == rows[skip:]


def test_parquet_column_must_hold_strings(tmp_path: Path) -> None:
    path = tmp_path / "input.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), path)
    with pytest.raises(InputUnreadable, match="holds int64, not strings"):
        open_reader(path, "parquet", "text")


def test_parquet_that_is_not_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "input.parquet"
    path.write_bytes(b"PAR1garbage")
    with pytest.raises(InputUnreadable, match=r"input\.parquet is not a readable Parquet file"):
        open_reader(path, "parquet", "text")


def test_parquet_with_damaged_pages_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "input.parquet"
    texts = [f"row {number} " * 5 for number in range(1000)]
    pq.write_table(pa.table({"text": texts}), path, compression="snappy")
    content = bytearray(path.read_bytes())
    content[2000:2500] = b"\xff" * 500  # inside the data page; the footer stays readable
    path.write_bytes(content)
    reader = open_reader(path, "parquet", "text")
    with pytest.raises(InputUnreadable, match=r"input\.parquet is not a readable Parquet file"):
        list(reader.rows())


def test_formats_follow_suffixes() -> None:
    assert input_format_for(Path("a.JSONL")) == "jsonl"
    assert input_format_for(Path("a.csv")) == "csv"
    assert input_format_for(Path("a.pq")) == "parquet"
    assert input_format_for(Path("notes.md")) == "txt"
    assert output_format_for(Path("v.npy")) == "npy"
    assert output_format_for(Path("v.parquet")) == "parquet"
    assert output_format_for(Path("v.bin")) is None


def test_jsonl_object_and_array_ids_keep_every_digit_of_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "input.jsonl"
    ids = [
        '{"doc": 0.1000000000000000055511, "n": 123456789012345678901234567890}',
        '[1.50, "é", {"x": true, "y": null}]',
        '{"plain": "id", "k": 7}',
    ]
    path.write_text("".join(f'{{"text": "t", "id": {row_id}}}\n' for row_id in ids))
    found = [row.id for row in open_reader(path, "jsonl", "text").rows()]
    assert found == [
        '{"doc":0.1000000000000000055511,"n":123456789012345678901234567890}',
        '[1.50,"é",{"x":true,"y":null}]',
        '{"plain":"id","k":7}',
    ]
