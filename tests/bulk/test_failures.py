"""`ember embed` failing part-way: one clear message, a non-zero exit, and a run that resumes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ember.bulk.checkpoint import checkpoint_path, read_checkpoint
from ember.engines.base import TokenBatch, Vectors
from ember.engines.fake import FakeEngine
from tests.bulk.conftest import FAKE_MODEL, Invoke
from tests.support.models import WORDS, write_fake_model

FAILING_MODEL = "fake-failing"
JUMPS = 4 + WORDS.index("jumps")  # its id in the tiny tokenizer, after four special tokens


def test_an_engine_fault_is_one_message_and_keeps_the_rows_before_it(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    write_fake_model(fake_models_dir, FAILING_MODEL, fake={"fail_token": JUMPS})
    source = tmp_path / "input.txt"
    source.write_text("hello world\nthe lazy dog\nthe fox jumps\nlast line\n")
    output = tmp_path / "v.jsonl"
    args = ["embed", source, "-o", output, "--models-dir", fake_models_dir, "--chunk-rows", "2"]

    failed = invoke(*args, "-m", FAILING_MODEL)
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert "Error: The model 'fake-failing' failed on rows 2-3 (RuntimeError: injected" in (
        failed.output
    )
    assert "the 2 rows before are saved" in failed.output
    assert not output.exists()
    saved = read_checkpoint(checkpoint_path(output))
    assert saved is not None
    assert saved.rows_done == 2


def test_a_bad_row_leaves_nothing_that_blocks_the_run_after_the_fix(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    # The fixed input is another file to the checkpoint (size, time, hash): a checkpoint kept
    # after the error could never be resumed, and made the corrected run ask for --restart.
    source = tmp_path / "input.txt"
    source.write_bytes(b"hello world\nthe lazy dog\ncaf\xe9\nlast line\n")
    output = tmp_path / "v.jsonl"
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]

    failed = invoke(*args, "--chunk-rows", "2")
    assert failed.exit_code == 1
    assert "Error: input.txt line 3: not UTF-8" in failed.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.txt", "models"]

    source.write_text("hello world\nthe lazy dog\ncafé\nlast line\n")
    fixed = invoke(*args, "--chunk-rows", "2")
    assert fixed.exit_code == 0, fixed.output
    assert "Embedded 4 rows" in fixed.output


@pytest.mark.parametrize(
    ("bad_record", "message"),
    [
        ("3\n", "input.csv line 5: 1 field where the header has 2, so no 'text' field"),
        ("3,cafe, au lait\n", "input.csv line 5: 3 fields where the header has 2"),
    ],
    ids=["fewer-fields", "more-fields"],
)
def test_a_csv_record_that_does_not_fit_the_header_stops_the_run_naming_its_line(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, bad_record: str, message: str
) -> None:
    # It was embedded as an empty text (fewer) or as its second field alone (more), silently.
    source = tmp_path / "input.csv"
    head = 'id,text\n1,hello world\n2,"the lazy\ndog"\n'
    source.write_text(head + bad_record + "4,last line\n")
    output = tmp_path / "v.jsonl"
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]

    failed = invoke(*args, "--chunk-rows", "2")
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert f"Error: {message}" in failed.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.csv", "models"]

    source.write_text(head + '3,"cafe, au lait"\n4,last line\n')
    fixed = invoke(*args, "--chunk-rows", "2")
    assert fixed.exit_code == 0, fixed.output
    assert "Embedded 4 rows" in fixed.output


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            '{"body": "hello"}\n{"body": "world"}\n',
            "input.jsonl line 1: no 'text' field (fields: 'body'); choose the field with --column.",
        ),
        (
            '{"text": "hello"}\n\n{"text": "world"}\n{"id": 3}\n{"text": "last"}\n',
            "input.jsonl line 4: no 'text' field (fields: 'id').",
        ),
    ],
    ids=["first-record", "later-record"],
)
def test_a_jsonl_record_without_the_text_field_names_the_file_and_line(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, records: str, message: str
) -> None:
    # --column can fix only a field missing from the first record: later on, the column is
    # right and the record is wrong. The message named no file either.
    source = tmp_path / "input.jsonl"
    source.write_text(records)
    output = tmp_path / "v.jsonl"
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]

    failed = invoke(*args, "--chunk-rows", "1")
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert failed.output.strip().splitlines()[-1] == f"Error: {message}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.jsonl", "models"]


@pytest.mark.parametrize("input_format", ["csv", "parquet"])
def test_a_header_or_schema_without_the_text_field_names_the_file(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, input_format: str
) -> None:
    # It said "No 'text' field in the header (…)", naming no file, unlike a JSONL record's.
    source = tmp_path / f"input.{input_format}"
    if input_format == "csv":
        source.write_text("id,body\n1,hello\n")
        place = "input.csv line 1"
    else:
        pq.write_table(pa.table({"id": [1], "body": ["hello"]}), source)
        place = "input.parquet"
    output = tmp_path / "v.jsonl"
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]

    failed = invoke(*args)
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert failed.output.strip().splitlines()[-1] == (
        f"Error: {place}: no 'text' field (fields: 'id', 'body'); choose the field with --column."
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [source.name, "models"]

    chosen = invoke(*args, "--column", "body")
    assert chosen.exit_code == 0, chosen.output
    assert "Embedded 1 row" in chosen.output


def test_a_bad_csv_record_under_restart_also_discards_the_run_it_replaces(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    # --restart drops the old run's partial output before the new input is read: its
    # checkpoint, kept after the error, would refuse the corrected run without --restart.
    write_fake_model(fake_models_dir, FAILING_MODEL, fake={"fail_token": JUMPS})
    source = tmp_path / "input.txt"
    source.write_text("hello world\nthe fox jumps\n")
    output = tmp_path / "v.jsonl"
    common = ["-o", output, "--models-dir", fake_models_dir, "--chunk-rows", "1"]
    assert invoke("embed", source, "-m", FAILING_MODEL, *common).exit_code == 1
    assert read_checkpoint(checkpoint_path(output)) is not None  # an unfinished run

    table = tmp_path / "input.csv"
    table.write_text("id,text\n1,hello\n2\n")
    failed = invoke("embed", table, "-m", FAKE_MODEL, *common, "--restart")
    assert failed.exit_code == 1
    assert "Error: input.csv line 3: 1 field where the header has 2" in failed.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.csv", "input.txt", "models"]

    table.write_text("id,text\n1,hello\n2,world\n")
    fixed = invoke("embed", table, "-m", FAKE_MODEL, *common)
    assert fixed.exit_code == 0, fixed.output
    assert "Embedded 2 rows" in fixed.output


def test_an_existing_output_is_kept_unless_the_run_is_told_to_replace_it(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("hello world\n")
    output = tmp_path / "results.jsonl"
    output.write_text('{"someone else\'s": "data"}\n')
    args = ["embed", source, "-m", FAKE_MODEL, "-o", output, "--models-dir", fake_models_dir]

    refused = invoke(*args)
    assert refused.exit_code == 1
    assert f"Error: {output} already exists" in refused.output
    assert "pass --restart to replace it" in refused.output
    assert output.read_text() == '{"someone else\'s": "data"}\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.txt", "models", output.name]

    replaced = invoke(*args, "--restart")
    assert replaced.exit_code == 0, replaced.output
    assert output.read_text().startswith('{"index":0,"embedding":[')


def test_stdin_and_stdout_are_refused_with_the_reason(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "input.txt"
    source.write_text("hello world\n")
    common = ["-m", FAKE_MODEL, "--models-dir", fake_models_dir]

    from_stdin = invoke("embed", "-", "-o", tmp_path / "v.jsonl", *common)
    assert from_stdin.exit_code == 2
    assert "Error: INPUT cannot be stdin ('-')" in from_stdin.output

    to_stdout = invoke("embed", source, "-o", "-", "--output-format", "jsonl", *common)
    assert to_stdout.exit_code == 2
    assert "Error: OUTPUT cannot be stdout ('-')" in to_stdout.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input.txt", "models"]


@pytest.mark.parametrize(
    "answer",
    [lambda vectors: vectors[:1], lambda vectors: vectors[:, :4]],
    ids=["one row for the batch", "vectors too narrow"],
)
def test_an_engine_answer_without_a_vector_per_row_is_refused_not_written(
    tmp_path: Path,
    fake_models_dir: Path,
    invoke: Invoke,
    monkeypatch: pytest.MonkeyPatch,
    answer: Callable[[Vectors], Vectors],
) -> None:
    embed = FakeEngine.embed

    def faulty(engine: FakeEngine, batch: TokenBatch, *, alone: bool = False) -> Vectors:
        return answer(embed(engine, batch, alone=alone))

    monkeypatch.setattr(FakeEngine, "embed", faulty)  # the fault injected
    source = tmp_path / "input.txt"
    source.write_text("hello world\nthe lazy dog\nthe fox jumps\n")
    output = tmp_path / "v.jsonl"
    failed = invoke(
        "embed", source, "-o", output, "--models-dir", fake_models_dir, "-m", FAKE_MODEL
    )
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert "Error: The model 'fake-bulk' failed on rows 0-2 (ValueError: the engine answered" in (
        failed.output
    )
    assert not output.exists()


@pytest.mark.parametrize("under", ["v.jsonl", "sub/v.jsonl"])
def test_an_output_under_a_file_is_one_plain_line(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke, under: str
) -> None:
    # It was Python's "[Errno 17] File exists: '…/notes.txt'" (ENOTDIR deeper down).
    source = tmp_path / "input.txt"
    source.write_text("hello world\n")
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    output = blocker / under
    failed = invoke("embed", source, "-m", FAKE_MODEL, "-o", output,
                    "--models-dir", fake_models_dir)  # fmt: skip
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert failed.output == f"Error: cannot write {output}: {blocker} is a file, not a folder\n"


def test_an_output_name_too_long_for_the_files_beside_it_says_so(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    source = tmp_path / "input.txt"
    source.write_text("hello world\n")
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    output = tmp_path / ("v" * (longest - len(".jsonl")) + ".jsonl")  # a name that fits
    failed = invoke("embed", source, "-m", FAKE_MODEL, "-o", output,
                    "--models-dir", fake_models_dir)  # fmt: skip
    assert isinstance(failed.exception, SystemExit), failed.exception
    assert failed.exit_code == 1
    assert failed.output == (
        f"Error: cannot write {output}.ember-lock: the name is too long (files kept beside "
        "OUTPUT add to its name: shorten it)\n"
    )


@pytest.fixture
def unprivileged(tmp_path: Path) -> list[str]:
    """The start of a command running Python as a user whom file permissions stop: as is for
    a regular user; for root (as tests often run), without the capabilities that let it past
    them. Skipped where neither works, rather than faking the error."""
    python = [sys.executable]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("root, and no setpriv to drop its file-permission override")
        python = [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable]
    folder = tmp_path / "probe"
    folder.mkdir(mode=0o500)
    probe = subprocess.run(
        [*python, "-c", "import sys; open(sys.argv[1], 'w')", str(folder / "file")],
        capture_output=True,
        text=True,
    )
    if "PermissionError" not in probe.stderr:
        pytest.skip(f"file permissions do not stop this user here ({probe.stderr[-200:]!r})")
    return python


@pytest.mark.parametrize("case", ["folder", "new folder", "input"])
def test_permission_denied_is_one_plain_line_naming_the_path(
    tmp_path: Path, fake_models_dir: Path, unprivileged: list[str], case: str
) -> None:
    # It was Python's "[Errno 13] Permission denied: 'locked/v.jsonl.ember-lock'"; an
    # unreadable INPUT is refused by click's check of the argument, a usage error.
    source = tmp_path / "input.txt"
    source.write_text("hello world\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    output = {"folder": locked / "v.jsonl", "new folder": locked / "new" / "v.jsonl"}.get(
        case, tmp_path / "v.jsonl"
    )
    expected = {
        "folder": (1, f"cannot write {output}.ember-lock: permission denied"),
        "new folder": (1, f"cannot create the folder {output.parent}: permission denied"),
        "input": (2, f"Invalid value for 'INPUT': File '{source}' is not readable."),
    }
    if case == "input":
        source.chmod(0o000)
    run = subprocess.run(
        [*unprivileged, "-m", "ember", "embed", str(source), "-m", FAKE_MODEL, "-o", str(output),
         "--models-dir", str(fake_models_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    status, message = expected[case]
    assert run.returncode == status, run.stderr
    assert run.stderr.endswith(f"Error: {message}\n"), run.stderr
    assert "Traceback" not in run.stderr


def test_a_folder_as_input_or_output_is_refused_before_the_run(
    tmp_path: Path, fake_models_dir: Path, invoke: Invoke
) -> None:
    # click's own check of the arguments says so already, as a usage error (status 2).
    source = tmp_path / "input.txt"
    source.write_text("hello world\n")
    common = ["-m", FAKE_MODEL, "--models-dir", fake_models_dir]
    from_folder = invoke("embed", tmp_path, "-o", tmp_path / "v.jsonl", *common)
    assert from_folder.exit_code == 2
    assert f"Error: Invalid value for 'INPUT': File '{tmp_path}' is a directory." in (
        from_folder.output
    )
    into_folder = invoke("embed", source, "-o", tmp_path, *common)
    assert into_folder.exit_code == 2
    assert f"Error: Invalid value for '-o' / '--output': File '{tmp_path}' is a directory." in (
        into_folder.output
    )
