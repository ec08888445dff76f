"""Every example of the Jan embeddings contract, run unchanged but for the model name."""

from __future__ import annotations

import httpx
import numpy as np
import openai
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression

MODEL = "all-MiniLM-L6-v2"


def test_curl_single_input(http: httpx.Client) -> None:
    response = http.post(
        "/v1/embeddings",
        json={"model": MODEL, "input": "The quick brown fox jumps over the lazy dog"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["object", "model", "data", "usage"]
    assert body["object"] == "list"
    assert body["model"] == MODEL
    (item,) = body["data"]
    assert item["object"] == "embedding"
    assert item["index"] == 0
    assert len(item["embedding"]) == 384
    assert abs(np.linalg.norm(item["embedding"]) - 1.0) < 1e-5
    # [CLS] + 9 words + [SEP]
    assert body["usage"] == {"prompt_tokens": 11, "total_tokens": 11}


def test_curl_batch_of_four(http: httpx.Client) -> None:
    texts = [
        "What is machine learning?",
        "How does neural network work?",
        "Explain deep learning",
        "What are transformers in AI?",
    ]
    response = http.post("/v1/embeddings", json={"model": MODEL, "input": texts})
    assert response.status_code == 200
    body = response.json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2, 3]
    singles = [
        http.post("/v1/embeddings", json={"model": MODEL, "input": text}).json()["data"][0]
        for text in texts
    ]
    for batched, single in zip(body["data"], singles, strict=True):
        assert np.dot(batched["embedding"], single["embedding"]) > 0.99999
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    assert body["usage"]["prompt_tokens"] == sum(
        http.post("/v1/embeddings", json={"model": MODEL, "input": text}).json()["usage"][
            "prompt_tokens"
        ]
        for text in texts
    )


def test_semantic_search_example(client: openai.OpenAI) -> None:
    documents = [
        "Python is a programming language",
        "JavaScript is used for web development",
        "Machine learning is a subset of AI",
    ]
    doc_response = client.embeddings.create(model=MODEL, input=documents)
    doc_embeddings = [item.embedding for item in doc_response.data]
    query_response = client.embeddings.create(model=MODEL, input="What is Python?")
    query_embedding = query_response.data[0].embedding

    def cosine_similarity(a: list[float], b: list[float]) -> float:
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    similarities = [cosine_similarity(query_embedding, doc) for doc in doc_embeddings]
    most_similar = int(np.argmax(similarities))
    assert documents[most_similar] == "Python is a programming language"
    assert similarities[most_similar] > 0.8


def test_clustering_example(client: openai.OpenAI) -> None:
    texts = [
        "I love programming",
        "Coding is fun",
        "I enjoy cooking",
        "Baking is relaxing",
        "Software development is my passion",
    ]
    response = client.embeddings.create(model=MODEL, input=texts)
    embeddings = [item.embedding for item in response.data]
    clusters = KMeans(n_clusters=2, random_state=0, n_init=10).fit_predict(embeddings)
    programming = {clusters[0], clusters[1], clusters[4]}
    cooking = {clusters[2], clusters[3]}
    assert len(programming) == 1
    assert len(cooking) == 1
    assert programming != cooking


def test_classification_example(client: openai.OpenAI) -> None:
    train_texts = [
        "This movie was amazing!",
        "Terrible film, waste of time",
        "Absolutely loved it",
        "Worst movie ever",
    ]
    train_labels = [1, 0, 1, 0]
    train_response = client.embeddings.create(model=MODEL, input=train_texts)
    train_embeddings = [item.embedding for item in train_response.data]
    classifier = LogisticRegression().fit(train_embeddings, train_labels)
    test_response = client.embeddings.create(model=MODEL, input="Great acting and story")
    prediction = classifier.predict([test_response.data[0].embedding])
    assert prediction[0] == 1


def test_openai_client_default_base64_matches_float(client: openai.OpenAI) -> None:
    """The official client asks for base64 unless told otherwise; both must agree exactly."""
    texts = ["Hello world", "Bonjour le monde", "こんにちは世界"]
    default = client.embeddings.create(model=MODEL, input=texts)
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    for decoded, plain in zip(default.data, floats.data, strict=True):
        assert np.array_equal(
            np.asarray(decoded.embedding, dtype=np.float32),
            np.asarray(plain.embedding, dtype=np.float32),
        )
