"""Turns a request's `input` into the model's token sequences, enforcing every limit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ember.api.protocol import EmbeddingInput
from ember.api.token_ids import Cl100k, TokenIdsMode, is_cl100k
from ember.engines.base import TokenIds
from ember.errors import ContextLengthExceeded, InvalidRequest, LimitExceeded
from ember.models.loader import LoadedModel
from ember.models.prompts import PromptIds, prompt_for, prompt_ids
from ember.settings import ServerSettings

# Below this many characters tokenising takes microseconds: cheaper than a thread hop.
INLINE_TOKENIZE_CHARS = 2048


# A request's peak memory, per vector value: the float32 result, a copy when shortened, and
# its JSON text (a float32 prints in at most 16 characters; base64 takes 5.4 bytes). Per token:
# the int64 id in the request's sequences, and again in its engine batch.
BYTES_PER_VECTOR_VALUE = 4 + 4 + 16
BYTES_PER_TOKEN = 8 + 8


@dataclass(frozen=True)
class PreparedInputs:
    """The sequences the engine will see, and how many tokens they hold."""

    sequences: list[TokenIds]
    prompt_tokens: int
    retokenized_from: str | None = None


def split_input(raw: EmbeddingInput) -> list[str] | list[list[int]]:
    """One list of texts or of token arrays, whatever shape the request used."""
    if isinstance(raw, str):
        return [raw]
    if not raw:
        raise InvalidRequest("'input' must not be an empty array.", param="input")
    if isinstance(raw[0], int):
        return [raw]
    return raw


async def prepare_inputs(
    raw: EmbeddingInput,
    model: LoadedModel,
    limits: ServerSettings,
    *,
    truncate: bool,
    input_type: str | None,
    cl100k: Cl100k,
    token_ids: TokenIdsMode,
) -> PreparedInputs:
    """Validate, tokenise and check `raw` against the model's and the server's limits."""
    items = split_input(raw)
    if len(items) > limits.max_inputs_per_request:
        raise LimitExceeded(
            f"Too many inputs: {len(items)}; at most {limits.max_inputs_per_request} per request "
            "(raise it with EMBER_MAX_INPUTS_PER_REQUEST).",
            param="input",
        )
    _check_memory(len(items), 0, model.settings.dimensions, limits)
    prefix = prompt_for(model.settings, input_type)
    retokenized_from = None
    if not isinstance(items[0], str):
        arrays: list[list[int]] = items
        _check_not_empty(arrays)
        if await asyncio.to_thread(is_cl100k, arrays, model.tokenizer, token_ids, cl100k):
            items = await asyncio.to_thread(cl100k.decode, arrays)
            retokenized_from = "cl100k_base"
    if isinstance(items[0], str):
        texts = _checked_texts(items, limits, decoded=retokenized_from is not None)
        if prefix:
            texts = [prefix + text for text in texts]
        if sum(len(text) for text in texts) <= INLINE_TOKENIZE_CHARS:
            sequences = model.tokenizer.encode(texts)
        else:
            sequences = await asyncio.to_thread(model.tokenizer.encode, texts)
    else:
        sequences = _checked_token_arrays(items, model)
        if prefix:
            prompt = _prompt_ids(model, prefix, input_type)
            sequences = [prompt.apply(sequence) for sequence in sequences]
    sequences = _within_context(sequences, model, truncate=truncate)
    total = sum(len(sequence) for sequence in sequences)
    if total > limits.max_tokens_per_request:
        raise LimitExceeded(
            f"Too many tokens in one request: {total}; at most {limits.max_tokens_per_request} "
            "(raise it with EMBER_MAX_TOKENS_PER_REQUEST, or split the request).",
            param="input",
        )
    _check_memory(len(sequences), total, model.settings.dimensions, limits)
    return PreparedInputs(sequences, total, retokenized_from)


def _check_memory(inputs: int, tokens: int, dimensions: int, limits: ServerSettings) -> None:
    """Refuse, before any work, a request whose estimated peak memory exceeds the limit.

    Engine batches are bounded by the model's ubatch_size, so what grows with the request is
    its vectors and token ids; called first with the vectors alone, then with the tokens.
    """
    needed = inputs * dimensions * BYTES_PER_VECTOR_VALUE + tokens * BYTES_PER_TOKEN
    allowed = limits.max_request_memory_mb * 1024 * 1024
    if needed > allowed:
        parts = f"{inputs} vectors of {dimensions} values" + (
            f", {tokens} tokens" if tokens else ""
        )
        raise LimitExceeded(
            f"This request would need about {needed / 2**20:.1f} MB of memory ({parts}); at "
            f"most {limits.max_request_memory_mb} MB per request (raise it with "
            "EMBER_MAX_REQUEST_MEMORY_MB, or split the request).",
            param="input",
        )


def _check_not_empty(arrays: list[list[int]]) -> None:
    for index, ids in enumerate(arrays):
        if not ids:
            raise InvalidRequest(f"Input {index} is an empty token array.", param="input")


def _checked_texts(texts: list[str], limits: ServerSettings, *, decoded: bool = False) -> list[str]:
    for index, text in enumerate(texts):
        if not text and not decoded:
            raise InvalidRequest(
                f"Input {index} is an empty string; every input must contain text.", param="input"
            )
        if len(text) > limits.max_input_chars:
            raise LimitExceeded(
                f"Input {index} has {len(text)} characters; at most {limits.max_input_chars} are "
                "accepted (raise it with EMBER_MAX_INPUT_CHARS).",
                param="input",
            )
    return texts


def _checked_token_arrays(arrays: list[list[int]], model: LoadedModel) -> list[TokenIds]:
    vocab_size = model.tokenizer.vocab_size
    sequences = []
    for index, ids in enumerate(arrays):
        bad = next((token for token in ids if not 0 <= token < vocab_size), None)
        if bad is not None:
            raise InvalidRequest(
                f"Input {index} has token id {bad}, outside the vocabulary of model "
                f"'{model.settings.id}' (0 to {vocab_size - 1}).",
                param="input",
            )
        sequences.append(model.tokenizer.wrap(ids))
    return sequences


def _prompt_ids(model: LoadedModel, prefix: str, input_type: str | None) -> PromptIds:
    """The prompt's token ids, found once per loaded model and prompt."""
    if prefix not in model.prompt_ids:
        model.prompt_ids[prefix] = prompt_ids(model.tokenizer, prefix)
    found = model.prompt_ids[prefix]
    if found is None:
        which = (
            "its default prompt"
            if input_type is None
            else f"the prompt of input_type '{input_type}'"
        )
        raise InvalidRequest(
            f"Model '{model.settings.id}' cannot add {which} ({prefix!r}) to token "
            "ids exactly: its tokenizer does not keep the prompt's tokens apart from the "
            "text's. Send the input as text instead.",
            param="input" if input_type is None else "input_type",
        )
    return found


def _within_context(
    sequences: list[TokenIds], model: LoadedModel, *, truncate: bool
) -> list[TokenIds]:
    limit = model.settings.ctx_len
    for index, sequence in enumerate(sequences):
        if len(sequence) <= limit:
            continue
        if not truncate:
            raise ContextLengthExceeded(index, len(sequence), limit)
        sequences[index] = model.tokenizer.truncate_ids(sequence)
    return sequences
