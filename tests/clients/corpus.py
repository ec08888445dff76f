"""A few hundred varied texts, short ones included, for client round trips."""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).parent.parent / "fixtures"
SUBJECTS = ["The cat", "A neural network", "My neighbour", "The river", "Python", "Übermensch"]
VERBS = ["jumps over", "explains", "forgets", "paints", "compiles", "naïvely mimics"]
OBJECTS = ["the lazy dog", "a quantum state", "42 apples", "東京の空", "🙂 emoji", "C++ code"]


def varied_texts(count: int = 300, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    texts: list[str] = json.loads((FIXTURES / "texts.json").read_text(encoding="utf-8"))
    texts += ["a", "Hi", "OK", "x y", "?", "1", "é"]
    while len(texts) < count:
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        texts.append(" ".join(words * rng.randint(1, 6)) + rng.choice([".", "!", "", "?"]))
    return texts[:count]
