"""Deterministic benchmark texts, each sized in the model's own tokens (special tokens counted).

Every text is `[CLS] word … word . [SEP]` built from words that the tokenizer keeps whole, so a
text of n tokens has exactly n - 3 words; the sizes are checked against the real tokenizer.
The same texts go to Ember and to every peer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tokenizers import Tokenizer

Kind = Literal["query", "batch", "concurrent"]
QueryClient = Literal["stdlib", "httpx"]

# Common English words; those the tokenizer splits are dropped at start-up.
_WORD_LIST = """
the of and to in is was for on are with as at be by this from have not but what all were when
we there can an your which their said each she do how if will up other about out many then them
these so some her would make like him into time has look two more write go see number no way
could people my than first water been call who oil its now find long down day did get come made
may part over new sound take only little work know place year live me back give most very after
thing our just name good sentence man think say great where help through much before line right
too mean old any same tell boy follow came want show also around form three small set put end
does another well large must big even such because turn here why ask went men read need land
different home us move try kind hand picture again change off play spell air away animal house
point page letter mother answer found study still learn should world high every near add food
between own below country plant last school father keep tree never start city earth eye light
thought head under story saw left few while along might close something seem next hard open
example begin life always those both paper together got group often run important until
children side feet car mile night walk white sea began grow took river four carry state once
book hear stop without second later miss idea enough eat face watch far real almost let above
girl sometimes mountain cut young talk soon list song being leave family body music color stand
sun question fish area mark dog horse birds problem complete room knew since ever piece told
usually friends easy heard order red door sure become top ship across today during short better
best however low hours black products happened whole measure remember early waves reached
"""
WORDS = tuple(_WORD_LIST.split())


@dataclass(frozen=True)
class Workload:
    """One benchmark input set: its texts and their token counts."""

    name: str
    title: str
    kind: Kind
    texts: tuple[str, ...]
    tokens: tuple[int, ...]
    group: str = ""  # workloads compared with each other are measured in the same rounds
    # The HTTP client that sends a query workload's requests (see systems.HttpSystem.queries).
    client: QueryClient = "stdlib"

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens)


class TextMaker:
    """Makes texts of an exact token length from single-token words, deterministically."""

    def __init__(self, tokenizer_path: Path, seed: int = 20240611) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._overhead = len(self._tokenizer.encode(".").ids)  # [CLS] . [SEP]
        self._words = [word for word in dict.fromkeys(WORDS) if self._single_token(word)]
        self._random = random.Random(seed)

    def _single_token(self, word: str) -> bool:
        return len(self._tokenizer.encode(word).ids) == self._overhead

    def text(self, tokens: int) -> str:
        """A sentence of exactly `tokens` tokens, special tokens included."""
        if tokens <= self._overhead:
            raise ValueError(f"a text needs more than {self._overhead} tokens, not {tokens}")
        words = [self._random.choice(self._words) for _ in range(tokens - self._overhead)]
        return " ".join(words).capitalize() + "."

    def count(self, texts: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self._tokenizer.encode_batch(texts)]

    def workload(
        self, name: str, title: str, kind: Kind, lengths: list[int], group: str = ""
    ) -> Workload:
        texts = [self.text(length) for length in lengths]
        counted = self.count(texts)
        wrong = [(want, got) for want, got in zip(lengths, counted, strict=True) if want != got]
        if wrong:
            raise ValueError(f"{name}: texts miss their sizes (wanted, got): {wrong[:3]}")
        return Workload(name, title, kind, tuple(texts), tuple(counted), group)

    def jittered(self, count: int, low: int, high: int) -> list[int]:
        return [self._random.randint(low, high) for _ in range(count)]


def grouped(workloads: list[Workload]) -> list[list[Workload]]:
    """Workloads in groups that share rounds, in first-seen order."""
    groups: dict[str, list[Workload]] = {}
    for workload in workloads:
        groups.setdefault(workload.group or workload.name, []).append(workload)
    return list(groups.values())


def build_workloads(tokenizer_path: Path) -> list[Workload]:
    """The workloads of the issue, in the order the table shows them."""
    maker = TextMaker(tokenizer_path)
    mixed_lengths = [5 + (245 * index) // 127 for index in range(128)]
    random.Random(7).shuffle(mixed_lengths)
    mean_length = round(sum(mixed_lengths) / len(mixed_lengths))
    control = maker.workload(
        "mixed_control", f"128 texts, all {mean_length} tok", "batch", [mean_length] * 128
    )
    sentences = maker.workload(
        "sentences", "256 sentences ~16 tok", "batch", maker.jittered(256, 14, 18)
    )
    texts64, tokens64 = sentences.texts[:64], sentences.tokens[:64]
    # One query, sent by two clients in the same rounds: the standard library's, which costs
    # the least of those a user might pick, and httpx (what the openai package runs on).
    query = maker.workload("query", "1 query, 10 tok", "query", [10], group="query")
    return [
        query,
        replace(query, name="query_httpx", title="1 query, 10 tok, httpx", client="httpx"),
        sentences,
        maker.workload("passages", "64 passages ~128 tok", "batch", maker.jittered(64, 120, 136)),
        maker.workload("mixed", "128 texts, 5-250 tok", "batch", mixed_lengths),
        replace(control, group="mixed"),
        Workload("single64", "64 sentences, 1 request", "batch", texts64, tokens64, "burst"),
        Workload(
            "concurrent64", "64 clients x 1 sentence", "concurrent", texts64, tokens64, "burst"
        ),
    ]
