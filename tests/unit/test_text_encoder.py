"""Unit tests for rayml.text_encoder: the plain-PyTorch MiniLM encoder, its classifier and ONNX export (no Ray)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pyarrow as pa
import pytest
import torch
from rayml import text_encoder as te
from rayml.errors import RaymlError, RegistryError

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome",
             "The new movie is so great", "The cat sits outside"]
# sentence-transformers 6.2.0 (SentenceTransformer(<bundled folder>).encode) on SENTENCES[0] and [2], first 6 dims
REFERENCE = {0: [0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617],
             2: [-0.100443, -0.077393, -0.001374, -0.048461, 0.004557, -0.052317]}


@pytest.fixture(scope="module")
def encoder():
    return te.load_encoder()


def run(model, texts, max_length=32):
    ids, mask = te.tokenize(texts, max_length=max_length)
    with torch.inference_mode():
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_bundled_encoder_matches_sentence_transformers_unit_norm_384(encoder):
    assert not encoder.training and encoder.weights_sha256 == te.BUNDLED_SHA256
    vectors = run(encoder, SENTENCES)
    assert vectors.shape == (5, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for row, expected in REFERENCE.items():
        np.testing.assert_allclose(vectors[row, :6], expected, atol=2e-6)


def test_paraphrases_are_much_closer_than_unrelated_sentences(encoder):
    v = run(encoder, SENTENCES)
    cos = v @ v.T
    paraphrase = min(cos[0, 1], cos[2, 3])
    unrelated = max(cos[0, 2], cos[0, 4], cos[1, 3], cos[3, 4])
    assert paraphrase > 0.7 and unrelated < 0.2, cos


def test_more_padding_and_other_rows_in_the_batch_change_nothing(encoder):
    short = run(encoder, SENTENCES[:1], max_length=12)
    padded = run(encoder, SENTENCES[:1], max_length=128)
    in_batch = run(encoder, ["x", *SENTENCES, "a much longer sentence " * 8], max_length=64)
    np.testing.assert_allclose(padded, short, atol=1e-5)
    np.testing.assert_allclose(in_batch[1:6], run(encoder, SENTENCES, max_length=64), atol=1e-5)
    np.testing.assert_allclose(in_batch[1:2], short, atol=1e-5)


def test_embed_sorts_and_trims_padding_yet_keeps_row_order(encoder):
    texts = ["the longest of these sentences, by quite a margin, is this one", "", None, *SENTENCES]
    ids, mask = te.tokenize(texts, max_length=64)
    got = te.embed(encoder, ids, mask, chunk_rows=3)
    np.testing.assert_allclose(got, run(encoder, texts, max_length=64), atol=1e-5)
    assert te.embed(encoder, ids[:0], mask[:0]).shape == (0, 384)


def test_embed_text_batch_function_keeps_other_columns(encoder):
    threads = torch.get_num_threads()
    try:
        fn = te.EmbedText("review", max_length=32, threads=1, chunk_rows=2)
        assert torch.get_num_threads() == 1
        out = fn(pa.table({"review": SENTENCES, "label": [1, 0, 1, 1, 0]}))
        listed = fn({"review": np.array(SENTENCES, dtype=object), "label": np.arange(5)})
    finally:
        torch.set_num_threads(threads)
    assert sorted(out) == ["embedding", "label"] and out["label"].tolist() == [1, 0, 1, 1, 0]
    assert out["embedding"].shape == (5, 384) and out["embedding"].dtype == np.float32
    np.testing.assert_allclose(out["embedding"], run(encoder, SENTENCES), atol=1e-5)
    np.testing.assert_allclose(listed["embedding"], out["embedding"], atol=1e-6)
    with pytest.raises(RaymlError, match="threads"):
        te.EmbedText("review", threads=0)


def test_classifier_trains_only_its_head_and_equals_head_on_precomputed_embeddings(encoder):
    torch.manual_seed(0)
    model = te.TextClassifier(encoder, te.build_head([16], 0.0, 3))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    ids, mask = (torch.from_numpy(a) for a in te.tokenize(SENTENCES, max_length=24))
    model.train()
    assert model.head.training and not model.encoder.training
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    logits = model(ids, mask)
    assert logits.shape == (5, 3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0, 1, 1, 2])).backward()
    assert all(p.grad is None and not p.requires_grad for p in model.encoder.parameters())
    assert all(p.grad is not None for p in model.head.parameters())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    model.eval()
    with torch.inference_mode():
        precomputed = model.head(torch.from_numpy(te.embed(encoder, ids.numpy(), mask.numpy())))
        np.testing.assert_allclose(model(ids, mask).numpy(), precomputed.numpy(), atol=1e-5)


def test_onnx_export_has_dynamic_batch_and_sequence_and_matches_torch(encoder, tmp_path):
    torch.manual_seed(0)
    model = te.TextClassifier(encoder, te.build_head([32], 0.1, 2)).eval()
    path = te.export_text_onnx(model, tmp_path / "classifier.onnx")
    graph = onnx.load(str(path), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"] and graph.output[0].name == "logits"
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        assert len(dims) == 2 and all(d.dim_param and not d.dim_value for d in dims)
    for rows, length in ((5, 48), (1, 7), (3, 128)):
        ids, mask = te.tokenize((SENTENCES * 2)[:rows], max_length=length)
        report = te.text_parity(model, path, ids, mask, tolerance=1e-4)
        assert report["passed"] and report["rows"] == rows and report["max_abs_diff"] < 1e-4


TINY = {"vocab_size": 40, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 16, "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
        "hidden_act": "gelu", "model_type": "bert", "architectures": ["BertModel"]}


def tiny_weights() -> dict[str, torch.Tensor]:
    config = te.BertConfig(**{k: v for k, v in TINY.items() if k in te.BertConfig.model_fields})
    theirs = {ours: key for key, ours in te.checkpoint_names(config).items()}
    generator = torch.Generator().manual_seed(0)
    model = te.SentenceEncoder(config)
    return {theirs[name]: torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}


def save_safetensors(tensors: dict[str, torch.Tensor], path) -> bytes:
    """The safetensors layout: u64 little-endian header size, JSON header, then the raw tensors."""
    header, chunks, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, tensor in tensors.items():
        raw = tensor.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    data = len(head).to_bytes(8, "little") + head + b"".join(chunks)
    path.write_bytes(data)
    return data


def write_model(folder, tensors, config=TINY, pooling=None):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if pooling is not None:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return hashlib.sha256(save_safetensors(tensors, folder / "model.safetensors")).hexdigest()


def test_a_well_formed_custom_folder_loads_and_its_sha_is_checked(tmp_path):
    tensors = tiny_weights()
    digest = write_model(tmp_path / "ok", {**tensors, "pooler.dense.bias": torch.zeros(8)})
    model = te.load_encoder(tmp_path / "ok", sha256=digest)
    out = model(torch.tensor([[1, 5, 7, 2, 0]]), torch.tensor([[1, 1, 1, 1, 0]]))
    assert out.shape == (1, 8) and model.weights_sha256 == digest
    torch.testing.assert_close(model.word.weight, tensors["embeddings.word_embeddings.weight"])
    with pytest.raises(RegistryError, match=r"sha256 .* expected 000000000000.*Reinstall"):
        te.load_encoder(tmp_path / "ok", sha256="0" * 64)


def test_bad_weights_files_fail_with_a_clear_error(tmp_path):
    tensors = tiny_weights()
    dropped = {k: v for k, v in tensors.items() if k != "encoder.layer.0.output.dense.bias"}
    write_model(tmp_path / "missing", {**dropped, "classifier.weight": torch.zeros(2, 8)})
    with pytest.raises(RegistryError, match=r"missing encoder\.layer\.0\.output\.dense\.bias; unexpected "
                                            r"classifier\.weight"):
        te.load_encoder(tmp_path / "missing")
    write_model(tmp_path / "shape", {**tensors, "embeddings.word_embeddings.weight": torch.zeros(41, 8)})
    with pytest.raises(RegistryError, match=r"word_embeddings\.weight is float32 \[41, 8\], expected float "
                                            r"\[40, 8\]"):
        te.load_encoder(tmp_path / "shape")
    write_model(tmp_path / "bad", tensors)
    weights = tmp_path / "bad" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-4])
    with pytest.raises(RegistryError, match=r"not a readable safetensors file \(tensor .* has data offsets"):
        te.load_encoder(tmp_path / "bad")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(RegistryError, match=r"not a readable safetensors file \(its header is not JSON\)"):
        te.load_encoder(tmp_path / "bad")
    weights.write_bytes(b"\xff" * 8 + whole[8:])
    with pytest.raises(RegistryError, match="header size field"):
        te.load_encoder(tmp_path / "bad")


def test_unsupported_configs_and_pooling_are_refused(tmp_path):
    tensors = tiny_weights()
    write_model(tmp_path / "relu", tensors, config={**TINY, "hidden_act": "relu"})
    with pytest.raises(RegistryError, match="hidden_act"):
        te.load_encoder(tmp_path / "relu")
    cls = {"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    write_model(tmp_path / "cls", tensors, pooling=cls)
    with pytest.raises(RegistryError, match="pooling_mode_cls_token"):
        te.load_encoder(tmp_path / "cls")
    with pytest.raises(RegistryError, match="config"):
        te.load_encoder(tmp_path / "nowhere")


def test_onnx_export_of_an_encoder_alone_outputs_sentence_embeddings(tmp_path):
    write_model(tmp_path / "tiny", tiny_weights())
    encoder = te.load_encoder(tmp_path / "tiny")
    path = te.export_text_onnx(encoder, tmp_path / "encoder.onnx")
    assert onnx.load(str(path)).graph.output[0].name == "sentence_embedding"
    ids = torch.randint(3, 40, (4, 11), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(11) < torch.tensor([[11], [6], [2], [9]])).long()
    report = te.text_parity(encoder, path, (ids * mask).numpy(), mask.numpy())
    assert report["rows"] == 4 and report["max_abs_diff"] < 1e-4
