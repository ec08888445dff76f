"""OS errors as one plain line: the cases a real run cannot easily produce."""

from __future__ import annotations

import errno
from pathlib import Path

from ember.cli.os_errors import os_error_line

READING, WRITING = Path("/data/in.txt"), Path("/out/v.jsonl")


def test_a_write_error_without_a_file_name_names_the_output() -> None:
    # A write to an open file raises without a name (a full disk, a quota).
    for code in (errno.ENOSPC, errno.EDQUOT):
        line = os_error_line(OSError(code, "No space left on device"), READING, WRITING)
        assert line.startswith("cannot write /out/v.jsonl: ")


def test_another_error_without_a_file_name_names_both_files() -> None:
    line = os_error_line(OSError(errno.EIO, "Input/output error"), READING, WRITING)
    assert line == (
        "input/output error (a failing disk or network share?) "
        "(reading /data/in.txt, writing /out/v.jsonl)"
    )


def test_the_input_and_a_models_file_are_read() -> None:
    gone = FileNotFoundError(errno.ENOENT, "No such file or directory", str(READING))
    assert os_error_line(gone, READING, WRITING) == (
        "cannot read /data/in.txt: no such file or folder"
    )
    weights = OSError(errno.EBADMSG, "Bad message", "/models/m/model.onnx")
    assert os_error_line(weights, READING, WRITING) == (
        "cannot read /models/m/model.onnx: bad message"
    )


def test_files_beside_the_output_are_written() -> None:
    denied = PermissionError(errno.EACCES, "Permission denied", "/out/v.jsonl.ember-partial")
    assert os_error_line(denied, READING, WRITING) == (
        "cannot write /out/v.jsonl.ember-partial: permission denied"
    )
