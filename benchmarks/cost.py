"""FLOPs a BERT-style encoder spends per input, from the model's config.json.

For a sequence of n tokens through L layers of width H and feed-forward width I:

    matmul weights  P = L * (4*H*H + 2*H*I)       # Q, K, V, output projection; FFN up, down
    FLOPs(n)        = 2*P*n + L*4*n*n*H           # weights: 2 FLOPs per weight per token;
                                                  # attention: Q.K^T and A.V, 2*n*n*H each

Embedding lookups, layer norms, softmax, biases, GELU and pooling are left out (under 2% for
MiniLM). Only real tokens count: padding a batch costs time but earns no FLOPs, so it shows
as a lower share of the peak.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class EncoderShape:
    """The dimensions of a BERT-style encoder that set its compute."""

    layers: int
    hidden: int
    intermediate: int

    @classmethod
    def from_config(cls, path: Path) -> EncoderShape:
        config = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            layers=int(config["num_hidden_layers"]),
            hidden=int(config["hidden_size"]),
            intermediate=int(config["intermediate_size"]),
        )

    @property
    def matmul_weights(self) -> int:
        hidden, intermediate = self.hidden, self.intermediate
        return self.layers * (4 * hidden * hidden + 2 * hidden * intermediate)

    def sequence_flops(self, tokens: int) -> int:
        """FLOPs to encode one sequence of `tokens` tokens."""
        return 2 * self.matmul_weights * tokens + self.layers * 4 * tokens * tokens * self.hidden

    def flops(self, lengths: Iterable[int]) -> int:
        return sum(self.sequence_flops(tokens) for tokens in lengths)
