"""Whatever a client sends, the answer is a 2xx or a well-formed OpenAI 4xx, never a 5xx.

Hypothesis generates bodies against the real server (uvicorn in a thread) on a fake model:
arbitrary JSON, arbitrary `input` shapes (unicode, surrogates, control characters, nested
lists, integers of any size, floats, nulls, booleans), and raw bytes that are not JSON.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ember.settings import ServerSettings
from tests.reliability.expect import is_openai_error
from tests.support.models import WORDS, write_fake_model
from tests.support.server import RunningServer, serve_in_thread

MODEL = "tiny"
DIMENSIONS = 8
BOUNDED = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    models_dir = tmp_path_factory.mktemp("models")
    write_fake_model(models_dir, MODEL, matryoshka_dimensions=[4])
    settings = ServerSettings(
        home=models_dir.parent, models_dir=models_dir, max_inputs_per_request=64
    )
    server: RunningServer
    with (
        serve_in_thread(settings) as server,
        httpx.Client(base_url=server.base_url, timeout=30) as client,
    ):
        yield client


# Every character, lone surrogates and control characters included.
any_text = st.text(st.characters(exclude_categories=[]), max_size=40)
# What valid JSON can carry: lone surrogates cannot be encoded, as UTF-8 or escaped.
valid_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
vocabulary_text = st.lists(st.sampled_from(WORDS), min_size=1, max_size=20).map(" ".join)
# Mostly text a JSON body can carry, so requests get past parsing to the deeper checks.
texts = st.one_of(vocabulary_text, valid_text, vocabulary_text, any_text)
any_int = st.one_of(
    st.integers(min_value=-5, max_value=40), st.integers(), st.integers(min_value=2**63)
)
any_float = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.floats())
scalars = st.one_of(st.none(), st.booleans(), any_int, any_float, texts)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(texts, children, max_size=4)
    ),
    max_leaves=30,
)
token_ids = st.integers(min_value=0, max_value=17)  # the tiny vocabulary
inputs = st.one_of(
    texts,
    st.lists(texts, max_size=70),
    st.lists(token_ids, min_size=1, max_size=20),
    st.lists(st.lists(token_ids, min_size=1, max_size=20), min_size=1, max_size=6),
    st.lists(any_int, max_size=20),
    st.lists(st.lists(any_int, max_size=20), max_size=6),
    st.lists(st.one_of(texts, any_int, any_float, st.lists(any_int, max_size=4)), max_size=6),
    json_values,
)
plausible_model = st.sampled_from([MODEL, MODEL, MODEL, "missing", ""])
known_fields = st.fixed_dictionaries(
    {"input": inputs, "model": st.one_of(plausible_model, json_values)},
    optional={
        "encoding_format": st.one_of(st.sampled_from(["float", "base64"]), json_values),
        "dimensions": st.one_of(st.sampled_from([4, 8, 9]), any_int, json_values),
        "truncate": st.one_of(st.booleans(), json_values),
        "input_type": st.one_of(st.sampled_from(["query", "document"]), json_values),
        "user": json_values,
    },
)
# Unknown fields too (the API ignores them), never overriding the known ones.
requests = st.builds(
    lambda extra, known: {**extra, **known},
    st.dictionaries(texts, json_values, max_size=3),
    known_fields,
)


def encode(payload: Any, ascii_only: bool) -> bytes:
    """JSON as clients write it: ASCII escapes, or raw UTF-8 (surrogates let through)."""
    text = json.dumps(payload, ensure_ascii=ascii_only)
    return text.encode("utf-8", errors="surrogatepass")


def post(http: httpx.Client, body: bytes) -> httpx.Response:
    return http.post("/v1/embeddings", content=body, headers={"Content-Type": "application/json"})


def assert_well_formed(response: httpx.Response, payload: Any = None) -> None:
    assert response.status_code < 500, response.text
    body = response.json()
    event(f"{response.status_code} {body['error']['code'] if 'error' in body else ''}")
    if response.status_code >= 400:
        assert is_openai_error(body), body
        return
    assert response.status_code == 200
    assert body["object"] == "list"
    assert body["usage"]["prompt_tokens"] > 0
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    if isinstance(payload, dict):
        raw = payload["input"]
        expected = 1 if isinstance(raw, str) or isinstance(raw[0], int) else len(raw)
        assert len(body["data"]) == expected
        width = payload.get("dimensions") or DIMENSIONS
        for item in body["data"]:
            vector = item["embedding"]
            if payload.get("encoding_format") == "base64":
                assert len(base64.b64decode(vector)) == 4 * width
            else:
                assert len(vector) == width


@BOUNDED
@given(payload=requests, ascii_only=st.booleans())
def test_any_embeddings_request_gets_2xx_or_an_openai_4xx(
    http: httpx.Client, payload: dict[str, Any], ascii_only: bool
) -> None:
    assert_well_formed(post(http, encode(payload, ascii_only)), payload)


@BOUNDED
@given(payload=json_values, ascii_only=st.booleans())
def test_any_json_body_gets_an_openai_4xx(
    http: httpx.Client, payload: Any, ascii_only: bool
) -> None:
    response = post(http, encode(payload, ascii_only))
    assert 400 <= response.status_code < 500
    assert_well_formed(response)


@settings(max_examples=100, deadline=None)
@given(body=st.binary(max_size=200))
def test_any_bytes_get_an_openai_4xx(http: httpx.Client, body: bytes) -> None:
    response = post(http, body)
    assert_well_formed(response)


@BOUNDED
@given(batch=st.lists(st.one_of(valid_text, vocabulary_text), min_size=1, max_size=64))
def test_texts_of_any_characters_are_embedded_or_refused_for_length(
    http: httpx.Client, batch: list[str]
) -> None:
    response = post(http, encode({"model": MODEL, "input": batch}, ascii_only=True))
    assert_well_formed(response, {"input": batch})
    if response.status_code != 200:
        assert response.json()["error"]["code"] == "context_length_exceeded"
