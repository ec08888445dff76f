"""model.json as users edit it by hand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ember.errors import InvalidModelSettings
from ember.models.settings import ModelSettings, parse_settings, read_settings, write_settings
from tests.support.models import write_fake_model


def test_a_model_json_saved_with_a_bom_is_read(tmp_path: Path) -> None:
    # Windows editors (Notepad before 2019, PowerShell 5's Out-File -Encoding utf8) add one.
    folder = write_fake_model(tmp_path / "models", "with-bom")
    settings = folder / "model.json"
    settings.write_bytes(b"\xef\xbb\xbf" + settings.read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "ember", "models", "list", "--models-dir", str(tmp_path / "models")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == ["with-bom", "fake", "8", "dims", "16", "tokens", "embedding"]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("normalize", "yes", "Input should be a valid boolean"),
        ("ctx_len", "512", "Input should be a valid integer"),
        ("embedding", 1, "Input should be a valid boolean"),
        # Ollama reads a negative keep_alive as "forever"; Ember unloaded such a model at once.
        ("keep_alive", -1, "Input should be greater than or equal to 0"),
    ],
)
def test_a_hand_edited_value_of_the_wrong_type_is_refused_not_guessed(
    tmp_path: Path, field: str, value: object, problem: str
) -> None:
    # Read leniently, "yes" served normalised vectors and "512" a 512-token limit: a typo
    # changed what the model did instead of saying what was wrong.
    folder = write_fake_model(tmp_path / "models", "edited", **{field: value})
    with pytest.raises(InvalidModelSettings) as raised:
        read_settings(folder)
    assert raised.value.message == f"edited: invalid model.json: {field}: {problem}"


def test_what_json_writes_one_way_still_reads(tmp_path: Path) -> None:
    folder = write_fake_model(
        tmp_path / "models", "plain",
        keep_alive=300, int8_min_cosine=1,  # whole numbers where floats are expected
        lanes=None, onnx_output=None, token_ids="model", pooling="cls", runtime="openvino",
        matryoshka_dimensions=[4], prompts={"query": "search_query: "}, aliases=["p"],
        notes={"by": "hand", "normalize": "yes"},  # unknown keys stay free-form
    )  # fmt: skip
    settings = read_settings(folder)
    assert (settings.keep_alive, settings.int8_min_cosine, settings.lanes) == (300.0, 1.0, None)
    assert (settings.token_ids, settings.pooling, settings.runtime) == ("model", "cls", "openvino")
    assert settings.matryoshka_dimensions == [4]


def test_every_field_ember_writes_reads_back(tmp_path: Path) -> None:
    # As importers assemble settings (parse_settings) and write them (write_settings).
    written = parse_settings(
        {
            "id": "full", "engine": "onnx", "embedding": False, "model_file": "m.onnx",
            "onnx_output": "461", "tokenizer_file": None, "ubatch_size": 128, "lanes": 2,
            "runtime": "openvino",
            "ctx_len": 64, "pooling": "lasttoken", "normalize": False, "quantize": "int8",
            "int8_min_cosine": 0.99, "dimensions": 8, "matryoshka_dimensions": [4, 2],
            "matryoshka_layer_norm": True, "prompts": {"q": "query: "}, "default_prompt": "q",
            "aliases": ["f"], "token_ids": "cl100k", "ngl": 3, "keep_alive": 1.5,
            "architecture": "bert",
        },
        "full",
    )  # fmt: skip
    assert set(ModelSettings.model_fields) <= written.model_fields_set
    write_settings(tmp_path, written)
    assert read_settings(tmp_path) == written


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("ctx_len", 8192.0, 8192),
        ("ngl", 0.0, 0),
        ("ubatch_size", 256.0, 256),
        ("lanes", 2.0, 2),
        ("dimensions", 8.0, 8),
        ("matryoshka_dimensions", [4.0, 2.0], [4, 2]),
        ("ctx_len", 1e3, 1000),
    ],
)
def test_a_whole_number_written_as_a_float_reads_as_an_integer(
    tmp_path: Path, field: str, value: object, expected: object
) -> None:
    # JSON has one number type: 8192.0 was refused as "not a valid integer".
    folder = write_fake_model(tmp_path / "models", "floats", **{field: value})
    assert getattr(read_settings(folder), field) == expected


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("ctx_len", 8.5, "8.5"),
        ("ngl", True, "true"),
        ("ubatch_size", 0.5, "0.5"),
        ("matryoshka_dimensions", [4.0, 2.5], "2.5"),
    ],
)
def test_a_fraction_or_boolean_for_a_whole_number_is_refused_by_name(
    tmp_path: Path, field: str, value: object, shown: str
) -> None:
    folder = write_fake_model(tmp_path / "models", "fraction", **{field: value})
    with pytest.raises(InvalidModelSettings) as raised:
        read_settings(folder)
    location = f"{field}.1" if isinstance(value, list) else field
    assert raised.value.message == (
        f"fraction: invalid model.json: {location}: Input should be a whole number, not {shown}"
    )


def test_models_list_reads_whole_floats_and_names_a_fraction(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    write_fake_model(models_dir, "whole", ctx_len=16.0, ubatch_size=64.0, ngl=0.0)
    write_fake_model(models_dir, "half", ctx_len=16.5)
    listed = subprocess.run(
        [sys.executable, "-m", "ember", "models", "list", "--models-dir", str(models_dir)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = listed.stdout.splitlines()
    assert lines[1].split() == ["whole", "fake", "8", "dims", "16", "tokens", "embedding"]
    assert lines[0].split(None, 1) == [
        "half",
        "error: half: invalid model.json: ctx_len: Input should be a whole number, not 16.5",
    ]
