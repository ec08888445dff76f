"""X-Forwarded-* from a proxy on this machine: honoured where a response depends on them."""

from __future__ import annotations

import httpx

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3"}


def test_a_redirect_keeps_the_scheme_a_local_tls_proxy_saw(http: httpx.Client) -> None:
    """The embeddings route skips the forwarded headers (it reads neither the client address
    nor the scheme); FastAPI's routes keep them, as uvicorn applied them to every request."""
    response = http.get("/health/", headers=FORWARDED)
    assert response.status_code == 307
    assert response.headers["location"] == f"https://{http.base_url.netloc.decode()}/health"


def test_the_embeddings_route_answers_behind_a_proxy(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "hi"}, headers=FORWARDED
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["data"][0]["embedding"]) == 384
