"""What an ONNX file a user adds needs beside it (its external weight files) and what it can
run (vector width, the tokenizer's ids, the longest input), found before it is registered."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ember.errors import InvalidModelSettings
from ember.models.settings import ModelSettings

if TYPE_CHECKING:
    from ember.engines.base import TokenIds, Vectors


def external_data_files(onnx_path: Path) -> list[str]:
    """The files beside the graph that hold its weights (exporters write graphs over 2 GB as
    model.onnx plus data files), as the graph names them; a name that leaves the graph's
    folder or a file that is not there is refused."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # onnx raises DecodeError and others; the probe run reports bad files
        return []
    locations = sorted(_external_locations(model.graph))
    for location in locations:
        path = PurePosixPath(location.replace("\\", "/"))
        if not path.parts or path.is_absolute() or ".." in path.parts:
            raise InvalidModelSettings(
                f"{onnx_path.name} keeps weights in {location!r}, outside its folder"
            )
        if not (onnx_path.parent / location).is_file():
            raise InvalidModelSettings(
                f"{onnx_path.name} keeps weights in {location!r}, which is not beside it"
            )
    return locations


def _external_locations(graph: Any) -> set[str]:
    """The external-data file names of a graph's tensors, its subgraphs' included."""
    tensors = list(graph.initializer)
    locations: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            tensors.extend([attribute.t] if attribute.HasField("t") else attribute.tensors)
            for subgraph in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                locations |= _external_locations(subgraph)
    for tensor in tensors:
        locations.update(entry.value for entry in tensor.external_data if entry.key == "location")
    return locations


def probe_graph(
    folder: Path, settings: ModelSettings, tokenizer_file: str, *, ctx_len_given: bool
) -> tuple[int, int]:
    """Run the graph to learn its vector width, and check it takes what the tokenizer makes.

    Returns (width, ctx_len). The tokenizer's highest id must run, or every text holding it
    would fail in the server. A ctx_len the graph cannot run (more tokens than its position
    table) is refused when the user gave it, and otherwise, being only what the tokenizer files
    or the default suggested, lowered to the longest input the graph runs.
    """
    from ember.engines.base import TokenBatch
    from ember.engines.onnx import OnnxEngine
    from ember.models.tokenizer import TextTokenizer

    tokenizer = TextTokenizer(folder / tokenizer_file, settings.ctx_len)
    # Quiet: the length search fails runs on purpose, and ONNX Runtime would print an ERROR
    # line for each before the add reports ready; the failures that matter are raised below.
    engine = OnnxEngine(
        folder / settings.model_file,
        pooling=settings.pooling,
        normalize_output=settings.normalize,
        threads=1,
        quiet=True,
    )
    (sample,) = tokenizer.encode(["hello world"])

    def run(ids: TokenIds) -> Vectors:
        return engine.embed(TokenBatch([ids]))

    try:
        try:
            vectors = run(sample)
        except Exception as exc:  # ORT raises untyped errors for graphs it cannot run
            raise InvalidModelSettings(f"{settings.model_file} does not run: {exc}") from exc
        top = tokenizer.vocab_size - 1
        if not _runs(run, np.insert(sample, 1, top)):
            raise InvalidModelSettings(
                f"{settings.model_file} fails on token id {top}, the tokenizer's highest: "
                "the graph's vocabulary is smaller; is this the graph's own tokenizer?"
            )
        ctx_len = settings.ctx_len
        if not _runs(run, np.resize(sample, ctx_len)):
            longest = _longest_run(run, sample, len(sample), ctx_len)
            if ctx_len_given:
                raise InvalidModelSettings(
                    f"{settings.model_file} does not run on {ctx_len} tokens, at most "
                    f"{longest}: use --ctx-len {longest}"
                )
            ctx_len = longest
    finally:
        engine.close()
    if vectors.ndim != 2 or vectors.shape[1] < 1:
        raise InvalidModelSettings(f"{settings.model_file} returns shape {vectors.shape}")
    return int(vectors.shape[1]), ctx_len


def _runs(run: Callable[[TokenIds], Vectors], ids: TokenIds) -> bool:
    try:
        run(ids)
    except Exception:  # ORT raises untyped errors for inputs a graph cannot take
        return False
    return True


def _longest_run(
    run: Callable[[TokenIds], Vectors], sample: TokenIds, runs: int, fails: int
) -> int:
    """The longest input the graph runs, between a length that runs and one that fails."""
    while fails - runs > 1:
        middle = (runs + fails) // 2
        if _runs(run, np.resize(sample, middle)):
            runs = middle
        else:
            fails = middle
    return runs
