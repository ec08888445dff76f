"""The official OpenAI Node.js SDK against the real server, unchanged but for its base URL.

The SDK asks for base64 unless told otherwise and decodes it as little-endian float32; its
vectors must be the ones the Python `openai` client gets as floats from the same server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tiktoken

from ember.settings import ServerSettings
from tests.clients.node_sdk import NodeSdk, install_sdk, missing_tools
from tests.support.models import write_fake_model
from tests.support.server import RunningServer, serve_in_thread
from tests.support.vectors import cosines

MODEL = "all-MiniLM-L6-v2"
MATRYOSHKA = "fake-matryoshka"  # the fake engine: deterministic 64-dim vectors, shortened
KEY = "sk-node"
TEXTS = ["The quick brown fox", "東京の空 🙂", "a", "Python is a programming language."]


@pytest.fixture(scope="session")
def node_sdk(tmp_path_factory: pytest.TempPathFactory) -> NodeSdk:
    reason = missing_tools()
    if reason is not None:
        pytest.skip(f"the OpenAI Node.js SDK test needs Node.js and npm: {reason}")
    return install_sdk(tmp_path_factory.mktemp("openai-node"))


@pytest.fixture(scope="module")
def server(
    default_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The real default model (linked, not copied) beside a fake Matryoshka one, behind a key."""
    home = tmp_path_factory.mktemp("home")
    models_dir = home / "models"
    models_dir.mkdir()
    os.symlink(default_models_dir / MODEL, models_dir / MODEL, target_is_directory=True)
    write_fake_model(models_dir, MATRYOSHKA, dimensions=64, matryoshka_dimensions=[32, 16])
    settings = ServerSettings(home=home, models_dir=models_dir, api_key=KEY)
    with serve_in_thread(settings) as running:
        yield running


@pytest.fixture
def python(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0)


def run(sdk: NodeSdk, server: RunningServer, script: str, *, key: str = KEY) -> dict[str, Any]:
    return sdk.run(script, url=server.api_url, key=key)


def create(request: dict[str, Any]) -> str:
    """A script calling `client.embeddings.create(request)` and reporting what it returned."""
    return f"""
const response = await client.embeddings.create({json.dumps(request)});
report({{ model: response.model, usage: response.usage, data: response.data }});
"""


def fails_to_create(request: dict[str, Any]) -> str:
    """A script expecting `client.embeddings.create(request)` to throw; reports the error."""
    return f"""
try {{
  await client.embeddings.create({json.dumps(request)});
  report({{ thrown: null }});
}} catch (error) {{ report({{ thrown: failure(error) }}); }}
"""


def assert_same_vectors(from_node: dict[str, Any], expected: Any) -> None:
    """Node's decoded vectors against the Python client's float ones: same order and dims."""
    data = from_node["data"]
    assert [item["index"] for item in data] == list(range(len(expected.data)))
    assert {len(item["embedding"]) for item in data} == {len(expected.data[0].embedding)}
    similarity = cosines(
        [item["embedding"] for item in data], [item.embedding for item in expected.data]
    )
    assert similarity.min() >= 0.9999, similarity
    assert from_node["usage"] == expected.usage.model_dump()
    assert from_node["model"] == expected.model


def test_a_string_is_fetched_as_base64_and_decoded_to_the_python_clients_vector(
    node_sdk: NodeSdk, server: RunningServer, python: openai.OpenAI
) -> None:
    result = run(node_sdk, server, create({"model": MODEL, "input": TEXTS[0]}))
    assert result["sent"][0]["encoding_format"] == "base64"  # the SDK's default
    assert result["received"] == ["string"]  # base64 text, which the SDK decoded
    expected = python.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    assert_same_vectors(result, expected)
    assert len(result["data"][0]["embedding"]) == 384


def test_a_batch_keeps_its_order(
    node_sdk: NodeSdk, server: RunningServer, python: openai.OpenAI
) -> None:
    result = run(node_sdk, server, create({"model": MODEL, "input": TEXTS}))
    expected = python.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert_same_vectors(result, expected)


def test_token_id_arrays_as_tiktoken_makes_them(
    node_sdk: NodeSdk, server: RunningServer, python: openai.OpenAI
) -> None:
    encoding = tiktoken.get_encoding("cl100k_base")
    arrays = [encoding.encode(text) for text in TEXTS]  # of different lengths
    for request_input in (arrays[0], arrays):
        result = run(node_sdk, server, create({"model": MODEL, "input": request_input}))
        assert result["received"] == ["string"]
        expected = python.embeddings.create(
            model=MODEL, input=request_input, encoding_format="float"
        )
        assert_same_vectors(result, expected)
    # Re-tokenised, they give the vectors of the texts they encode.
    texts = python.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    assert_same_vectors(result, texts)


def test_dimensions_shorten_a_matryoshka_models_vectors(
    node_sdk: NodeSdk, server: RunningServer, python: openai.OpenAI
) -> None:
    result = run(node_sdk, server, create({"model": MATRYOSHKA, "input": TEXTS, "dimensions": 16}))
    assert result["sent"][0]["dimensions"] == 16
    expected = python.embeddings.create(
        model=MATRYOSHKA, input=TEXTS, dimensions=16, encoding_format="float"
    )
    assert_same_vectors(result, expected)
    assert len(result["data"][0]["embedding"]) == 16
    norms = np.linalg.norm([item["embedding"] for item in result["data"]], axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_dimensions_on_a_model_without_matryoshka_sizes_is_a_bad_request(
    node_sdk: NodeSdk, server: RunningServer
) -> None:
    request = {"model": MODEL, "input": "x", "dimensions": 128}
    thrown = run(node_sdk, server, fails_to_create(request))["thrown"]
    assert thrown["isBadRequestError"]
    assert thrown["status"] == 400
    assert thrown["error"]["code"] == "dimensions_not_supported"
    assert thrown["error"]["param"] == "dimensions"


def test_float_encoding_is_passed_through_as_arrays(
    node_sdk: NodeSdk, server: RunningServer, python: openai.OpenAI
) -> None:
    request = {"model": MODEL, "input": TEXTS, "encoding_format": "float"}
    result = run(node_sdk, server, create(request))
    assert result["sent"][0]["encoding_format"] == "float"
    assert result["received"] == ["object"]  # JSON arrays, untouched by the SDK
    assert_same_vectors(result, python.embeddings.create(**request))
    decoded = run(node_sdk, server, create({"model": MODEL, "input": TEXTS}))
    assert np.allclose(
        [item["embedding"] for item in decoded["data"]],
        [item["embedding"] for item in result["data"]],
        rtol=0,
        atol=1e-7,
    )


def test_a_wrong_key_raises_authentication_error(node_sdk: NodeSdk, server: RunningServer) -> None:
    request = {"model": MODEL, "input": "x"}
    thrown = run(node_sdk, server, fails_to_create(request), key="sk-wrong")["thrown"]
    assert thrown["isAuthenticationError"]
    assert thrown["status"] == 401
    assert thrown["error"]["code"] == "invalid_api_key"
    assert thrown["error"]["type"] == "invalid_request_error"


def test_an_unknown_model_raises_not_found_naming_the_models_there_are(
    node_sdk: NodeSdk, server: RunningServer
) -> None:
    request = {"model": "text-embedding-3-small", "input": "x"}
    thrown = run(node_sdk, server, fails_to_create(request))["thrown"]
    assert thrown["isNotFoundError"]
    assert thrown["status"] == 404
    error = thrown["error"]
    assert error["code"] == "model_not_found"
    assert error["type"] == "invalid_request_error"
    assert "text-embedding-3-small" in error["message"]
    assert MODEL in error["message"]


def test_models_list_and_retrieve(node_sdk: NodeSdk, server: RunningServer) -> None:
    script = f"""
const ids = [];
for await (const model of client.models.list()) ids.push([model.id, model.object]);
const one = await client.models.retrieve({json.dumps(MODEL)});
report({{ ids, one: {{ id: one.id, object: one.object, dimensions: one.dimensions }} }});
"""
    result = run(node_sdk, server, script)
    assert sorted(result["ids"]) == [[MODEL, "model"], [MATRYOSHKA, "model"]]
    assert result["one"] == {"id": MODEL, "object": "model", "dimensions": 384}


def test_text_cut_inside_an_emoji_is_embedded(
    node_sdk: NodeSdk, server: RunningServer, python: openai.OpenAI
) -> None:
    """`text.slice()` in JavaScript can end on half a surrogate pair, which JSON.stringify
    sends as a lone `\\ud83d` escape; it is embedded as U+FFFD, as OpenAI's tiktoken does."""
    script = f"""
const cut = 'smile 🙂'.slice(0, 7);  // 'smile ' and the pair's high half
const response = await client.embeddings.create({{ model: {json.dumps(MODEL)}, input: cut }});
report({{ model: response.model, usage: response.usage, data: response.data }});
"""
    result = run(node_sdk, server, script)
    expected = python.embeddings.create(model=MODEL, input="smile \ufffd", encoding_format="float")
    assert_same_vectors(result, expected)
