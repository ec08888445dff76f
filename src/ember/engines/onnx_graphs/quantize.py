"""The opt-in int8 variant of an encoder graph Ember built: per-token int8 products, fp32 where
int8 costs too much fidelity, checked against the fp32 graph on calibration text.

Why this recipe (all-MiniLM-L6-v2 on a 2-core AVX-512 VNNI CPU, ONNX Runtime 1.32; min cosine
to fp32 over fixture, held-out and generated texts; benchmarks/quantize_bench.py):

- ONNX Runtime's dynamic int8 (`quantize_dynamic`) gives each product's input one scale for the
  whole batch. BERT's [CLS] token carries activations ~10x larger than other tokens in a few
  channels, so that scale is coarse for every other token: min cosine 0.80 with per-tensor
  weights, 0.97 per-channel, and a text's vector depends on its batch-mates. Leaving layers
  fp32 does not rescue it: each product alone already costs ~0.001.
- Block-wise MatMulNBits (8 bits, block 32, accuracy_level 4, like llama.cpp's q8_0) keeps
  0.9985 but runs at fp32 speed: its 8-bit kernel does ~200 GOP/s, the u8s8 VNNI GEMM ~700.
- So each token gets its own scale, with a zero point per input fitted on calibration text
  (GELU outputs are one-sided), and the few input channels whose calibration range is several
  times the median channel's (the [CLS] outliers) stay fp32 in a thin side product. The int8
  product is MatMulIntegerToFloat (the u8s8 GEMM) with per-column weight scales; the side
  product's Gemm also adds the int8 result and the product's bias, so row scales and bias
  cost one pass over the output (one fewer: 1.01-1.04x tokens/s on 1-thread lanes). That alone,
  all products int8: min cosine 0.9985 at 1.7x the fp32 graph's tokens/s. Weight rounding is
  about half of that error, activation rounding the other half.
- SmoothQuant on LayerNorm outputs (the Q/K/V and FFN-in inputs): channel ranges evened out
  by s = sqrt(max|x| / max|w|), x / s folded into the Mul that already zeroes the outlier
  channels, so it costs nothing at run time. It cuts those products' error by 10-30%; on the
  GELU outputs and the attention context it measured worse or no better, so they are left.
- GPTQ rounding of every weight, with the calibration Hessian (each text weighing the same)
  heavily damped: ~500 calibration tokens overfit a light damping. Weight error on held-out
  text drops 10-25%. Both together: all int8 at min cosine 0.99896 (held-out and generated
  text; 0.9989 on the calibration text) at 1.7x (CPU) to 1.9x (wall). Bias correction, more
  outlier channels or AWQ-style scaling for the GELU outputs bought nothing.
- The inputs whose products hurt the vectors most per weight then stay fp32, as few as meet
  `target_cosine` on the calibration text: 0.9992 by default keeps two of MiniLM's 24
  inputs fp32 (an attention output and one FFN output) and 0.99917 on held-out text. One
  thread, fp32 and int8 graphs alternating: 1.79x the fp32 graph's speed on 32x16 tokens,
  1.65x on 4x128, 1.55x on 2x250 (the attention core stays fp32 in both graphs, and its
  share grows with length). Keeping a third input (another FFN output), as a single pass of
  the choice below did, cost 4-5%: 1.72x, 1.58x, 1.50x. Earlier, on a quiet machine, three
  inputs kept gave 1.61-1.63x the fp32 graph's tokens per CPU-second (1.69-1.78x wall
  clock). On two threads, one call ran only 1.24x fp32's: the per-token quantisation
  and the passes around each int8 product are small memory-bound operators that ONNX
  Runtime's pool does not speed up (some ran slower on 2 threads than on 1). Two 1-thread
  engine lanes (OnnxEngine) gave 1.55-1.75x, and the server 1.67-1.69x fp32's tokens/s on
  passages and sentences while fp32 ran one 2-thread lane; with fp32 on 1-thread lanes too,
  1.40-1.50x through the server and 1.49-1.66x in-process (on a busy host).
- all-mpnet-base-v2 is harder: at the default target five inputs stay fp32 (the same five
  after the passes; `ember models add` measured 0.99911 on held-out text), min cosine 0.9993
  on fixture text, 0.9991 on held-out text, but 0.9981 and 0.9988 on 2 of ~300 generated
  word runs (224 and 112 tokens; all others >= 0.9990). On the worst one, a single input (the
  layer-1 FFN output, mul_2) costs 0.002 while it costs 0.00007 on the calibration text, and
  its activations there are in the calibration range. Adding calibration text moved the tail
  instead of removing it, at 2-3x the quantisation time: 16 word runs of 1-180 words (the
  worst text fixed, another at 0.9981), 34 runs with capitals (the same text at 0.9981), 6
  texts in other scripts (0.9980). So its int8 variant keeps less than the 0.999 promised.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import onnx

from ember.engines.onnx_graphs.builder import set_metadata
from ember.engines.onnx_graphs.int8_graph import SWITCH, rewrite
from ember.engines.onnx_graphs.int8_plan import (
    InputGroup,
    calibrate,
    find_groups,
    planned,
    signed_weights_exact,
)
from ember.engines.onnx_graphs.int8_runs import (
    Fidelity,
    FloatArray,
    TokenIds,
    compare,
    padded_batches,
    session_for,
    vectors_of,
)
from ember.engines.onnx_graphs.int8_texts import CALIBRATION_TEXTS, FIDELITY_TEXTS

__all__ = [
    "CALIBRATION_TEXTS",
    "DEFAULT_TARGET_COSINE",
    "FIDELITY_TEXTS",
    "METADATA_CALIBRATION_COSINE",
    "METADATA_FP32_INPUTS",
    "Fidelity",
    "measure_fidelity",
    "quantize_int8",
]

# Met on the calibration text, a margin over the 0.999 promised on other text.
DEFAULT_TARGET_COSINE = 0.9992
METADATA_FP32_INPUTS = "ember.int8.fp32_inputs"
METADATA_CALIBRATION_COSINE = "ember.int8.calibration_min_cosine"


def quantize_int8(
    model: onnx.ModelProto,
    calibration: Sequence[TokenIds],
    *,
    target_cosine: float = DEFAULT_TARGET_COSINE,
    signed_weights: bool | None = None,
) -> onnx.ModelProto:
    """An int8 copy of `model` whose vectors for `calibration` keep `target_cosine` to fp32.

    `model` is a graph Ember built: inputs `input_ids` and `attention_mask`, float vectors out,
    products possibly inside a row-chunking Loop. Every MatMul by a constant 2-D float weight is
    a candidate. `calibration` holds token-id sequences of varied text (CALIBRATION_TEXTS,
    tokenised). The inputs left fp32 and the calibration min cosine are recorded in the model's
    metadata; if nothing can be int8 within the target, the copy is all fp32.

    `signed_weights` picks int8 weights (ONNX Runtime's u8s8 kernels) or uint8 ones (u8u8);
    the default is int8 where u8s8 is exact: everywhere but x86 CPUs without VNNI, whose u8s8
    kernel saturates 16-bit pair sums. Quantise on the machine that will serve the graph.
    """
    if not calibration:
        raise ValueError("quantize_int8 needs calibration token ids")
    groups = find_groups(model)
    if not groups:
        return copy.deepcopy(model)
    activations = calibrate(model, [group.input for group in groups], calibration)
    signed = signed_weights_exact() if signed_weights is None else signed_weights
    row_weights = np.concatenate(
        [np.full(max(len(ids), 1), 1 / max(len(ids), 1)) for ids in calibration]
    )
    groups = [planned(g, activations[g.input], row_weights, signed=signed) for g in groups]
    trial = _Trial(rewrite(model, groups, switched=True), len(groups), calibration)
    fp32, fidelity = _choose_fp32(trial, groups, target_cosine)
    quantized = rewrite(model, [g for i, g in enumerate(groups) if i not in fp32], switched=False)
    set_metadata(quantized, METADATA_FP32_INPUTS, ",".join(groups[i].input for i in sorted(fp32)))
    set_metadata(quantized, METADATA_CALIBRATION_COSINE, f"{fidelity.min_cosine:.6f}")
    return quantized


def _choose_fp32(
    trial: _Trial, groups: Sequence[InputGroup], target_cosine: float
) -> tuple[set[int], Fidelity]:
    """The inputs to leave fp32: few, and cheap ones, such that the rest meets the target.

    Each input's damage is measured with it alone int8. Inputs are ranked by damage per weight
    (the compute int8 would save), the count kept fp32 is bisected (fidelity grows nearly
    monotonically with it), then each kept input is tried as int8 again, biggest first, in
    passes until one moves none: an input dropped in a pass changes what the others cost, and
    on MiniLM a second pass moved one more FFN output (a third of the fp32 products' time) to
    int8 at the same target.
    """
    everything = set(range(len(groups)))
    fidelity = trial.fidelity(everything)
    if fidelity.min_cosine >= target_cosine:
        return set(), fidelity
    size = [sum(p.weight.size for p in group.products) for group in groups]
    damage = [1.0 - trial.fidelity({index}).min_cosine for index in everything]
    ranked = sorted(everything, key=lambda index: -damage[index] / size[index])
    low, kept, fidelity = 0, len(groups), Fidelity(1.0, 1.0, fidelity.texts)
    while kept - low > 1:
        middle = (low + kept) // 2
        measured = trial.fidelity(everything - set(ranked[:middle]))
        if measured.min_cosine >= target_cosine:
            kept, fidelity = middle, measured
        else:
            low = middle
    fp32 = set(ranked[:kept])
    moved = True
    while moved:
        moved = False
        for index in sorted(fp32, key=lambda index: (-size[index], damage[index])):
            measured = trial.fidelity((everything - fp32) | {index})
            if measured.min_cosine >= target_cosine:
                fp32.discard(index)
                fidelity, moved = measured, True
    return fp32, fidelity


def measure_fidelity(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, token_ids: Sequence[TokenIds]
) -> Fidelity:
    """Cosine of `candidate`'s vectors to `reference`'s, text by text (min and mean)."""
    batches = list(padded_batches(token_ids))
    return compare(
        vectors_of(session_for(reference), batches), vectors_of(session_for(candidate), batches)
    )


class _Trial:
    """One session holding both paths of every group, an input choosing int8 per group: any
    mix of int8 and fp32 is one run away, and all fp32 is the reference."""

    def __init__(self, switched: onnx.ModelProto, groups: int, calibration: Sequence[TokenIds]):
        self._session = session_for(switched)
        self._groups = groups
        self._batches = list(padded_batches(calibration))
        self._reference = self._vectors(set())

    def fidelity(self, int8: set[int]) -> Fidelity:
        return compare(self._reference, self._vectors(int8))

    def _vectors(self, int8: set[int]) -> FloatArray:
        switch = np.zeros(self._groups, dtype=bool)
        switch[sorted(int8)] = True
        return vectors_of(self._session, self._batches, {SWITCH: switch})
