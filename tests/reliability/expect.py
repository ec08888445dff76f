"""What the reliability tests check again and again: OpenAI error bodies and metric values."""

from __future__ import annotations

import re
from typing import Any

import httpx

ERROR_FIELDS = {"message", "type", "param", "code"}


def assert_error(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    """The response is `status` with a well-formed OpenAI error body carrying `code`."""
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == ERROR_FIELDS, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in error["message"]
    assert error["code"] == code, error
    return error


def is_openai_error(body: Any) -> bool:
    """Whether `body` is `{"error": {"message": str, "type": str, "param", "code"}}`."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return False
    error = body["error"]
    return (
        isinstance(error, dict)
        and set(error) == ERROR_FIELDS
        and isinstance(error["message"], str)
        and bool(error["message"])
        and isinstance(error["type"], str)
        and (error["param"] is None or isinstance(error["param"], str))
        and (error["code"] is None or isinstance(error["code"], str))
    )


def metric(base_url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """The value of one sample of /metrics, e.g. `ember_batch_sequences_sum`; 0 when absent."""
    text = httpx.get(f"{base_url}/metrics", headers=headers, timeout=10).text
    pattern = re.compile(rf"^{re.escape(name)} (\S+)$", re.MULTILINE)
    found = pattern.search(text)
    return float(found.group(1)) if found else 0.0
