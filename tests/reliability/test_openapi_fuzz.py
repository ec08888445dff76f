"""Schemathesis fuzzes every operation of Ember's own /openapi.json: no 5xx, answers as documented.

Schemathesis' pytest plugin (`schema.parametrize()`) does not run under this pytest (it sets
`Function._nodeid`, which pytest 9 no longer has), so each operation's Hypothesis strategy is
driven directly; a test checks the list below still covers every documented operation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.result import Ok

from ember.settings import ServerSettings
from tests.support.models import write_fake_model
from tests.support.server import serve_in_thread

CHECKS = [not_a_server_error, response_schema_conformance]
OPERATIONS = [
    ("GET", "/health"),
    ("POST", "/v1/embeddings"),
    ("GET", "/metrics"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
]


@pytest.fixture(scope="module")
def ember_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    models_dir = tmp_path_factory.mktemp("models")
    write_fake_model(models_dir, "tiny", matryoshka_dimensions=[4])
    settings = ServerSettings(home=models_dir.parent, models_dir=models_dir)
    with serve_in_thread(settings) as server:
        yield schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")


def test_every_documented_operation_is_fuzzed(ember_schema: schemathesis.BaseSchema) -> None:
    results = list(ember_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the schema has operations schemathesis cannot read"
    assert {(operation.method.upper(), operation.path) for operation in operations} == set(
        OPERATIONS
    )


# Negative cases (data that breaks the schema) exist only where there is data to break.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or method == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_operation_answers_as_documented(
    ember_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = ember_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    def answers(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(checks=CHECKS)
        # Generated ids name no model; the same request for a real model goes deeper.
        if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
            case.body["model"] = "tiny"
        elif case.path_parameters and "model_id" in case.path_parameters:
            case.path_parameters["model_id"] = "tiny"
        else:
            return
        case.call_and_validate(checks=CHECKS)

    answers()
