"""`ember models add` on every kind of input: GGUF, Jan folders, Hugging Face folders, ONNX."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import httpx
import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from tokenizers import Tokenizer, models

from ember.cli import main
from ember.engines.base import TokenBatch
from ember.engines.cores import available_cores
from ember.engines.onnx_graphs.bert import build_bert_graph
from ember.errors import InvalidModelSettings
from ember.models.gguf_header import read_gguf_metadata
from ember.models.importers import AddOptions, add_model
from ember.models.loader import load_model
from ember.models.settings import read_settings
from ember.settings import ServerSettings
from tests.reference_forward.bert import bert_sentence_embeddings
from tests.support.gguf_files import (
    TinyBertFolder,
    convert_folder,
    write_chat_gguf,
    write_jan_model,
    write_tiny_bert_folder,
)
from tests.support.models import write_fake_model
from tests.support.nomic import NOMIC_PROMPTS, write_tiny_nomic_folder
from tests.support.server import serve_in_thread


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Input files made once: a tiny BERT folder, its GGUF conversion and a chat model."""
    folder = tmp_path_factory.mktemp("sources")
    bert = write_tiny_bert_folder(folder / "tiny-bert", seed=7)
    convert_folder(bert.path, folder / "tiny-bert-f32.gguf")
    write_chat_gguf(folder / "tiny-chat-q4.gguf")
    nomic = write_tiny_nomic_folder(folder / "tiny-nomic", seed=8, matryoshka=True)
    convert_folder(nomic.path, folder / "nomic-embed-text-v1.5.f32.gguf")
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "ember-home"


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def add(path: Path, home: Path, *options: str) -> Result:
    result = run_cli("models", "add", str(path), "--home", str(home), *options)
    assert result.exit_code == 0, result.output
    return result


def model_json(home: Path, folder: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(
        (home / "models" / folder / "model.json").read_text(encoding="utf-8")
    )
    return loaded


# --- GGUF files ------------------------------------------------------------------------------


def test_gguf_file_takes_its_settings_from_the_header(sources: Path, home: Path) -> None:
    result = add(sources / "tiny-bert-f32.gguf", home)
    assert "ready: tiny-bert-f32 (gguf, 32 dims, embedding)" in result.output
    settings = model_json(home, "tiny-bert-f32")
    assert settings["engine"] == "gguf"
    assert settings["embedding"] is True
    assert settings["model_file"] == "tiny-bert-f32.gguf"
    assert settings["tokenizer_file"] is None
    assert (settings["ctx_len"], settings["dimensions"]) == (64, 32)
    assert (settings["pooling"], settings["normalize"]) == ("mean", True)
    assert settings["architecture"] == "bert"
    copied = home / "models" / "tiny-bert-f32" / "tiny-bert-f32.gguf"
    assert copied.read_bytes() == (sources / "tiny-bert-f32.gguf").read_bytes()
    # Same file system: the weights are hard-linked, not copied.
    assert os.stat(copied).st_ino == os.stat(sources / "tiny-bert-f32.gguf").st_ino


def test_gguf_options_override_the_header(sources: Path, home: Path) -> None:
    add(
        sources / "tiny-bert-f32.gguf",
        home,
        "--id",
        "bert-cls",
        "--pooling",
        "cls",
        "--no-normalize",
        "--ctx-len",
        "32",
    )
    settings = model_json(home, "bert-cls")
    assert settings["id"] == "bert-cls"
    assert (settings["pooling"], settings["normalize"], settings["ctx_len"]) == ("cls", False, 32)


def test_a_nomic_gguf_offers_nomics_task_prefixes(sources: Path, home: Path) -> None:
    add(sources / "nomic-embed-text-v1.5.f32.gguf", home, "--id", "nomic-embed-text")
    settings = model_json(home, "nomic-embed-text")
    assert settings["architecture"] == "nomic-bert"
    assert (settings["ctx_len"], settings["dimensions"]) == (2048, 32)
    assert settings["prompts"] == NOMIC_PROMPTS
    assert settings["default_prompt"] is None  # Jan sends text unprefixed; so does Ember


def test_a_chat_gguf_is_registered_as_not_embedding(sources: Path, home: Path) -> None:
    result = add(sources / "tiny-chat-q4.gguf", home)
    assert "not embedding" in result.output
    settings = model_json(home, "tiny-chat-q4")
    assert settings["embedding"] is False
    assert (settings["ctx_len"], settings["dimensions"]) == (4096, 16)


def test_gguf_context_is_capped_for_long_context_models(tmp_path: Path) -> None:
    long_context = write_chat_gguf(tmp_path / "long.gguf", context=131072)
    (settings,) = add_model(long_context, tmp_path / "models")
    assert settings.ctx_len == 8192


def test_gguf_header_reader_refuses_other_files(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(InvalidModelSettings, match="not a GGUF file"):
        read_gguf_metadata(fake)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 4)
    with pytest.raises(InvalidModelSettings, match="cannot read the GGUF header"):
        read_gguf_metadata(truncated)


@pytest.mark.parametrize("write_pooling", ["add_string", "add_float32", "add_bool"])
def test_a_gguf_whose_pooling_type_is_not_an_integer_is_refused(
    tmp_path: Path, write_pooling: str
) -> None:
    path = tmp_path / "odd-pooling.gguf"
    writer = gguf.GGUFWriter(str(path), "bert")
    writer.add_context_length(512)
    writer.add_embedding_length(16)
    getattr(writer, write_pooling)(
        "bert.pooling_type", {"add_string": "mean"}.get(write_pooling, 1)
    )
    writer.add_tensor("token_embd.weight", np.zeros((4, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidModelSettings, match=r"bert\.pooling_type is not an integer"):
        add_model(path, tmp_path / "models")
    assert not any((tmp_path / "models").glob("*"))


# --- Jan folders -----------------------------------------------------------------------------


@pytest.fixture
def jan_data(sources: Path, tmp_path: Path) -> Path:
    """A Jan data folder: two embedding models (one with a nested id) and a chat model."""
    data = tmp_path / "Jan" / "data"
    write_jan_model(data, "nomic-embed-text", sources / "tiny-bert-f32.gguf", embedding=True)
    write_jan_model(
        data, "Menlo/Jan-nano-gguf/jan-nano-4b-Q4_K_M", sources / "tiny-chat-q4.gguf",
        embedding=False,
    )  # fmt: skip
    write_jan_model(
        data, "tiny-bert-ctx", sources / "tiny-bert-f32.gguf", embedding=True, ctx_len=48, ngl=99
    )
    (data / "llamacpp" / "backends").mkdir(parents=True)  # Jan keeps llama-server builds here
    return data


def test_a_jan_model_folder_keeps_jans_id_and_settings(jan_data: Path, home: Path) -> None:
    add(jan_data / "llamacpp" / "models" / "tiny-bert-ctx", home)
    settings = model_json(home, "tiny-bert-ctx")
    assert settings["id"] == "tiny-bert-ctx"
    assert (settings["ctx_len"], settings["ngl"], settings["embedding"]) == (48, 99, True)
    assert settings["model_file"] == "model.gguf"


def test_a_jan_data_folder_imports_every_model(jan_data: Path, home: Path) -> None:
    result = add(jan_data, home)
    assert "added Menlo/Jan-nano-gguf/jan-nano-4b-Q4_K_M (not embedding)" in result.output
    listed = run_cli("models", "list", "--home", str(home)).output
    assert "nomic-embed-text" in listed
    assert "tiny-bert-ctx" in listed
    chat = model_json(home, "Menlo--Jan-nano-gguf--jan-nano-4b-Q4_K_M")
    assert chat["id"] == "Menlo/Jan-nano-gguf/jan-nano-4b-Q4_K_M"
    assert chat["embedding"] is False
    assert model_json(home, "nomic-embed-text")["embedding"] is True
    # A second import skips what is already there rather than failing.
    again = run_cli("models", "add", str(jan_data), "--home", str(home))
    assert again.exit_code != 0
    assert "already registered" in again.output


def test_cortex_era_model_yml_with_files_and_model_keys(sources: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cortex" / "models" / "cortex.so" / "nomic-embed-text-v1" / "main"
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes((sources / "tiny-bert-f32.gguf").read_bytes())
    (folder / "model.yml").write_text(
        "model: nomic-embed-text-v1\nname: nomic-embed-text-v1\nversion: 1\n"
        f"files:\n  - {folder / 'model.gguf'}\nengine: llama-cpp\nctx_len: 0\nngl: 13\n"
        "embedding: true\n",
        encoding="utf-8",
    )
    (settings,) = add_model(folder, tmp_path / "models")
    assert settings.id == "nomic-embed-text-v1"
    assert (settings.ctx_len, settings.ngl) == (64, 13)  # ctx_len 0 means the model's own


def test_a_chat_model_from_jan_answers_model_not_embedding(jan_data: Path, home: Path) -> None:
    add(jan_data, home)
    with (
        serve_in_thread(ServerSettings(home=home)) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        response = client.post(
            "/v1/embeddings",
            json={"model": "Menlo/Jan-nano-gguf/jan-nano-4b-Q4_K_M", "input": "hello"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "model_not_embedding"
    assert error["type"] == "invalid_request_error"


# --- Hugging Face folders and ONNX files -----------------------------------------------------


@pytest.fixture(scope="module")
def bert_folder(sources: Path) -> TinyBertFolder:
    config = json.loads((sources / "tiny-bert" / "config.json").read_text(encoding="utf-8"))
    from safetensors.numpy import load_file

    weights = load_file(str(sources / "tiny-bert" / "model.safetensors"))
    return TinyBertFolder(sources / "tiny-bert", config, weights)


def reference_vectors(
    bert: TinyBertFolder, ids: list[np.ndarray], *, normalize: bool
) -> np.ndarray:
    batch = TokenBatch(ids)
    input_ids, mask = batch.padded()
    return bert_sentence_embeddings(
        bert.config, bert.weights, input_ids, mask, pooling="mean", normalize=normalize
    )


def test_a_hugging_face_folder_is_copied_in_and_built(
    bert_folder: TinyBertFolder, home: Path
) -> None:
    result = add(bert_folder.path, home, "--id", "tiny-bert-hf")
    assert "building the ONNX graph" in result.output
    folder = home / "models" / "tiny-bert-hf"
    settings = read_settings(folder)
    assert (settings.engine, settings.ctx_len, settings.dimensions) == ("onnx", 64, 32)
    assert (folder / "model.onnx").is_file()
    assert not (bert_folder.path / "model.onnx").exists()  # the source folder is untouched
    loaded = load_model(folder, settings)
    ids = loaded.tokenizer.encode(["the quick brown fox", "hello world !"])
    vectors = loaded.engine.embed(TokenBatch(ids))
    loaded.engine.close()
    expected = reference_vectors(bert_folder, ids, normalize=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_lanes_in_model_json_reach_the_engine(bert_folder: TinyBertFolder, home: Path) -> None:
    add(bert_folder.path, home, "--id", "tiny-bert-lanes")
    folder = home / "models" / "tiny-bert-lanes"
    settings = read_settings(folder).model_copy(update={"lanes": 2})
    loaded = load_model(folder, settings)
    try:
        assert loaded.engine.lanes == min(2, available_cores())
    finally:
        loaded.engine.close()


def test_hf_folders_refuse_pooling_options(bert_folder: TinyBertFolder, home: Path) -> None:
    with pytest.raises(InvalidModelSettings, match=r"modules\.json"):
        add_model(bert_folder.path, home / "models", AddOptions(pooling="cls"))
    assert not (home / "models").exists()


def test_a_failed_import_leaves_nothing_behind(
    bert_folder: TinyBertFolder, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "gpt2-folder"
    shutil.copytree(bert_folder.path, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}), "utf-8")
    with pytest.raises(InvalidModelSettings, match="'gpt2' is not supported"):
        add_model(folder, home / "models")
    assert list((home / "models").iterdir()) == []  # staging removed, nothing registered


@pytest.fixture(scope="module")
def onnx_file(bert_folder: TinyBertFolder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's export: mean-pooled, not normalised, its output named by the exporter.

    Like paraphrase-MiniLM-L3-v2's ONNX file, whose output `461` is pooled but not unit
    length; built here by Ember's own BERT graph builder from the tiny weights.
    """
    path = tmp_path_factory.mktemp("onnx") / "tiny-bert-export.onnx"
    graph = build_bert_graph(
        bert_folder.config, bert_folder.weights, pooling="mean", normalize=False
    )
    for node in graph.graph.node:
        node.output[:] = ["461" if name == "sentence_embedding" else name for name in node.output]
    graph.graph.output[0].name = "461"
    onnx.checker.check_model(graph)
    onnx.save_model(graph, str(path))
    return path


@pytest.mark.parametrize("tokenizer_kind", ["tokenizer.json", "folder", "vocab.txt"])
def test_an_onnx_file_with_its_tokenizer(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path, tmp_path: Path, tokenizer_kind: str
) -> None:
    if tokenizer_kind == "tokenizer.json":
        tokenizer = bert_folder.path / "tokenizer.json"
    elif tokenizer_kind == "folder":
        tokenizer = bert_folder.path
    else:
        vocab = json.loads((bert_folder.path / "tokenizer.json").read_text("utf-8"))["model"][
            "vocab"
        ]
        tokenizer = tmp_path / "vocab.txt"
        tokenizer.write_text("\n".join(sorted(vocab, key=vocab.__getitem__)) + "\n", "utf-8")
    result = add(onnx_file, home, "--tokenizer", str(tokenizer), "--ctx-len", "64")
    assert "ready: tiny-bert-export (onnx, 32 dims, embedding)" in result.output
    folder = home / "models" / "tiny-bert-export"
    settings = read_settings(folder)
    assert (settings.pooling, settings.normalize, settings.ctx_len) == ("mean", True, 64)
    loaded = load_model(folder, settings)
    ids = loaded.tokenizer.encode(["the lazy dog", "python is a language"])
    vectors = loaded.engine.embed(TokenBatch(ids))
    loaded.engine.close()
    np.testing.assert_allclose(
        vectors, reference_vectors(bert_folder, ids, normalize=True), atol=1e-5
    )


def test_an_onnx_file_takes_its_limit_from_the_tokenizer_files(
    onnx_file: Path, bert_folder: TinyBertFolder, tmp_path: Path
) -> None:
    options = AddOptions(tokenizer=bert_folder.path, normalize=False)
    (settings,) = add_model(onnx_file, tmp_path / "models", options)
    assert (settings.ctx_len, settings.normalize) == (64, False)  # sentence_bert_config.json


def test_an_onnx_file_brings_its_external_weights(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path, tmp_path: Path
) -> None:
    # Exporters write graphs over 2 GB (and Ember its own) as model.onnx plus a data file the
    # graph names; only model.onnx was copied in, so the add failed to load it.
    export = tmp_path / "export"
    export.mkdir()
    onnx.save_model(
        onnx.load(str(onnx_file)), str(export / "model.onnx"), save_as_external_data=True,
        location="model.onnx_data",
    )  # fmt: skip
    result = add(
        export / "model.onnx", home, "--tokenizer", str(bert_folder.path), "--id", "external"
    )
    assert "ready: external (onnx, 32 dims, embedding)" in result.output
    folder = home / "models" / "external"
    assert (folder / "model.onnx_data").is_file()
    loaded = load_model(folder, read_settings(folder))
    ids = loaded.tokenizer.encode(["the lazy dog"])
    vectors = loaded.engine.embed(TokenBatch(ids))
    loaded.engine.close()
    np.testing.assert_allclose(
        vectors, reference_vectors(bert_folder, ids, normalize=True), atol=1e-5
    )


def test_an_onnx_file_whose_weights_lie_outside_its_folder_is_refused(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path, tmp_path: Path
) -> None:
    onnx.save_model(
        onnx.load(str(onnx_file)), str(tmp_path / "model.onnx"), save_as_external_data=True,
        location="weights.bin",
    )  # fmt: skip
    # The same graph one folder down, naming its weights by a path that climbs back out.
    graph = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    for tensor in graph.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../weights.bin"
    (tmp_path / "export").mkdir()
    moved = tmp_path / "export" / "model.onnx"
    onnx.save_model(graph, str(moved))
    result = run_cli(
        "models", "add", str(moved), "--home", str(home), "--tokenizer", str(bert_folder.path)
    )
    assert result.exit_code != 0
    assert "../weights.bin" in result.output
    assert not (home / "models" / "model").exists()


def lone_tokenizer(bert_folder: TinyBertFolder, folder: Path, *extra_words: str) -> Path:
    """The folder's tokenizer.json alone (no files saying the model's limit), with words
    appended to its vocabulary that the graph's embedding table has no rows for."""
    folder.mkdir()
    tokenizer = Tokenizer.from_file(str(bert_folder.path / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    for word in extra_words:
        vocab[word] = len(vocab)
    tokenizer.model = models.WordPiece(vocab, unk_token="[UNK]")
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def test_an_onnx_file_gets_the_length_its_graph_takes(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path, tmp_path: Path
) -> None:
    # Nothing beside the tokenizer says the limit, so 512 is the guess; the graph has 64
    # positions, and inputs between the two failed in the engine (503) instead of a 400.
    tokenizer = lone_tokenizer(bert_folder, tmp_path / "tokenizer")
    add(onnx_file, home, "--tokenizer", str(tokenizer))
    assert model_json(home, "tiny-bert-export")["ctx_len"] == 64
    with (
        serve_in_thread(ServerSettings(home=home)) as running,
        httpx.Client(base_url=running.base_url, timeout=30) as client,
    ):
        long = client.post(
            "/v1/embeddings", json={"model": "tiny-bert-export", "input": "hello " * 100}
        )
        cut = client.post(
            "/v1/embeddings",
            json={"model": "tiny-bert-export", "input": "hello " * 100, "truncate": True},
        )
    assert long.status_code == 400, long.text
    assert long.json()["error"]["code"] == "context_length_exceeded"
    assert cut.status_code == 200, cut.text


SERVING_FAULT = """
import sys
from pathlib import Path

import numpy as np

from ember.engines.base import TokenBatch
from ember.models.loader import load_model
from ember.models.settings import read_settings

folder = Path(sys.argv[1])
engine = load_model(folder, read_settings(folder)).engine
try:
    engine.embed(TokenBatch([np.ones(100, dtype=np.int64)]), alone=True)
except Exception:
    pass
engine.close()
"""


def test_an_onnx_file_probed_past_its_length_adds_without_runtime_error_lines(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path, tmp_path: Path
) -> None:
    # The probe runs 512, 258, ... tokens on a 64-position graph to find its length, and ONNX
    # Runtime printed an [E:onnxruntime:...] line for each failed run above "ready". Its own
    # C++ logger writes to the process's stderr, so only a real process shows it.
    tokenizer = lone_tokenizer(bert_folder, tmp_path / "tokenizer")
    added = subprocess.run(
        [sys.executable, "-m", "ember", "models", "add", str(onnx_file),
         "--home", str(home), "--tokenizer", str(tokenizer)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "ready: tiny-bert-export" in added.stdout
    assert model_json(home, "tiny-bert-export")["ctx_len"] == 64  # so probe runs failed
    assert "onnxruntime" not in added.stdout + added.stderr
    # Served, the same graph still reports a run that fails.
    served = subprocess.run(
        [sys.executable, "-c", SERVING_FAULT, str(home / "models" / "tiny-bert-export")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    assert "[E:onnxruntime:" in served.stderr


def test_an_onnx_file_refuses_a_ctx_len_its_graph_cannot_take(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path
) -> None:
    result = run_cli(
        "models", "add", str(onnx_file), "--home", str(home),
        "--tokenizer", str(bert_folder.path), "--ctx-len", "100",
    )  # fmt: skip
    assert result.exit_code != 0
    assert "does not run on 100 tokens" in result.output
    assert "--ctx-len 64" in result.output
    assert not (home / "models" / "tiny-bert-export").exists()


def test_an_onnx_file_refuses_a_tokenizer_with_ids_past_its_vocabulary(
    onnx_file: Path, bert_folder: TinyBertFolder, home: Path, tmp_path: Path
) -> None:
    # "hello world" is in both vocabularies; "zebra" only in the tokenizer's, and served it
    # failed in the engine (503) on every request that held it.
    tokenizer = lone_tokenizer(bert_folder, tmp_path / "tokenizer", "zebra", "giraffe")
    result = run_cli(
        "models", "add", str(onnx_file), "--home", str(home),
        "--tokenizer", str(tokenizer), "--ctx-len", "64",
    )  # fmt: skip
    assert result.exit_code != 0
    assert "token id 27" in result.output
    assert not (home / "models" / "tiny-bert-export").exists()


def test_an_onnx_file_takes_sentence_transformers_limit_over_the_tokenizers(
    onnx_file: Path, bert_folder: TinyBertFolder, tmp_path: Path
) -> None:
    # As all-MiniLM-L6-v2's files: tokenizer.json truncates at 128, sentence-transformers
    # (and Ember's own import of the folder) at 256. The ONNX file took 128, so inputs the
    # model serves elsewhere were refused or cut shorter.
    folder = tmp_path / "tokenizer"
    shutil.copytree(bert_folder.path, folder)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(32)
    tokenizer.save(str(folder / "tokenizer.json"))
    (settings,) = add_model(onnx_file, tmp_path / "models", AddOptions(tokenizer=folder))
    assert settings.ctx_len == 64  # sentence_bert_config.json


def test_an_onnx_file_needs_a_tokenizer(onnx_file: Path, home: Path) -> None:
    result = run_cli("models", "add", str(onnx_file), "--home", str(home))
    assert result.exit_code != 0
    assert "--tokenizer" in result.output


# --- show, rm and refusals -------------------------------------------------------------------


def test_show_prints_settings_and_files(jan_data: Path, home: Path) -> None:
    add(jan_data, home)
    shown = run_cli("models", "show", "Menlo/Jan-nano-gguf/jan-nano-4b-Q4_K_M", "--home", str(home))
    assert shown.exit_code == 0, shown.output
    settings_text, _, files = shown.output.partition("folder: ")
    assert json.loads(settings_text)["embedding"] is False
    assert "model.gguf" in files
    missing = run_cli("models", "show", "nope", "--home", str(home))
    assert missing.exit_code != 0
    assert "does not exist" in missing.output


def test_rm_finds_a_model_whose_id_has_slashes(jan_data: Path, home: Path) -> None:
    add(jan_data, home)
    removed = run_cli("models", "rm", "Menlo/Jan-nano-gguf/jan-nano-4b-Q4_K_M", "--home", str(home))
    assert removed.exit_code == 0, removed.output
    assert not (home / "models" / "Menlo--Jan-nano-gguf--jan-nano-4b-Q4_K_M").exists()


def test_adding_an_existing_id_is_refused(sources: Path, home: Path) -> None:
    add(sources / "tiny-bert-f32.gguf", home)
    again = run_cli("models", "add", str(sources / "tiny-bert-f32.gguf"), "--home", str(home))
    assert again.exit_code != 0
    assert "already registered" in again.output


@pytest.mark.parametrize("model_id", [".hidden", "../escape", "x" * 300])
def test_ids_that_cannot_name_a_visible_folder_are_refused(
    sources: Path, home: Path, model_id: str
) -> None:
    # A folder starting with "." is one the registry skips: "ready" but never listed or removable.
    gguf = str(sources / "tiny-bert-f32.gguf")
    result = run_cli("models", "add", gguf, "--id", model_id, "--home", str(home))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")
    assert list(home.glob("models/*")) == []


def test_an_id_taken_by_another_add_meanwhile_is_refused(
    bert_folder: TinyBertFolder, sources: Path, home: Path
) -> None:
    models_dir = home / "models"

    def other_add_finishes_first(_message: str) -> None:  # reported while the graph builds
        add_model(sources / "tiny-bert-f32.gguf", models_dir, AddOptions(model_id="twice"))

    with pytest.raises(InvalidModelSettings, match="'twice' is already registered"):
        add_model(
            bert_folder.path, models_dir, AddOptions(model_id="twice"), other_add_finishes_first
        )
    assert [path.name for path in models_dir.iterdir()] == ["twice"]
    assert read_settings(models_dir / "twice").engine == "gguf"


def test_a_models_folder_that_is_a_file_is_an_error_line(sources: Path, home: Path) -> None:
    home.mkdir()
    (home / "models").write_text("not a folder", encoding="utf-8")
    result = run_cli("models", "add", str(sources / "tiny-bert-f32.gguf"), "--home", str(home))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ")
    assert str(home / "models") in result.output


def test_rm_of_a_linked_model_folder_removes_the_link_only(home: Path, tmp_path: Path) -> None:
    outside = write_fake_model(tmp_path / "elsewhere", "linked")
    (home / "models").mkdir(parents=True)
    (home / "models" / "linked").symlink_to(outside, target_is_directory=True)
    result = run_cli("models", "rm", "linked", "--home", str(home))
    assert result.exit_code == 0, result.output
    assert list((home / "models").iterdir()) == []
    assert (outside / "model.json").is_file()  # the user's own files are left


def test_unknown_inputs_are_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InvalidModelSettings, match="not a model Ember can add"):
        add_model(tmp_path / "notes", tmp_path / "models")


@pytest.fixture(autouse=True)
def _no_stray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads EMBER_* variables; tests pass --home explicitly."""
    for name in [name for name in os.environ if name.startswith("EMBER_")]:
        monkeypatch.delenv(name)


def test_staging_folders_of_killed_runs_are_swept_on_the_next_add(
    sources: Path, home: Path
) -> None:
    """A pull or add killed mid-way leaves its hidden staging folder (hundreds of MB for a
    pull): the next add removes those whose process is gone, and a pull killed between its
    two renames gets its previous model folder back."""
    models_dir = home / "models"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        abandoned_add = models_dir / f".add-{gone.pid}-tiny-bert-abc123"
        abandoned_pull = models_dir / f".all-MiniLM-L6-v2.pull-{gone.pid}-def456"
        live_pull = models_dir / f".paraphrase-minilm.pull-{running.pid}-ghi789"
        users_own = models_dir / ".git"
        for folder in (abandoned_add, live_pull / "wheels", users_own):
            folder.mkdir(parents=True)
        write_fake_model(abandoned_pull, "previous")
        (abandoned_add / "weights.bin").write_bytes(b"\0" * 1024)

        add(sources / "tiny-bert-f32.gguf", home)

        assert not abandoned_add.exists()
        assert not abandoned_pull.exists()
        restored = json.loads((models_dir / "all-MiniLM-L6-v2" / "model.json").read_text())
        assert restored["id"] == "previous"
        assert live_pull.is_dir()
        assert users_own.is_dir()
    finally:
        running.kill()
        running.wait()


def test_a_default_id_keeps_letters_of_any_script(
    sources: Path, home: Path, tmp_path: Path
) -> None:
    named = tmp_path / "ünï modèle 模型.gguf"
    shutil.copy(sources / "tiny-bert-f32.gguf", named)
    add(named, home)
    assert model_json(home, "ünï-modèle-模型")["id"] == "ünï-modèle-模型"


@pytest.mark.parametrize("model_id", ["", "  "])
def test_an_empty_id_is_refused(sources: Path, home: Path, model_id: str) -> None:
    gguf = str(sources / "tiny-bert-f32.gguf")
    result = run_cli("models", "add", gguf, "--id", model_id, "--home", str(home))
    assert result.exit_code == 2, result.output
    assert "'--id': must not be empty" in result.output
    assert not home.exists()


def test_an_id_too_long_for_a_folder_is_refused_before_any_work(
    bert_folder: TinyBertFolder, home: Path
) -> None:
    reported: list[str] = []
    options = AddOptions(model_id="é" * 200)  # 400 bytes in UTF-8
    with pytest.raises(InvalidModelSettings, match="too long for a folder name"):
        add_model(bert_folder.path, home / "models", options, reported.append)
    assert reported == []
