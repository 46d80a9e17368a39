"""Calibration text for a language model: ``torchinn compress --input-ids N,L --calibration FILE``.

``FILE`` is either

* a safetensors file of tokenized text: ``input_ids`` (integers, ``[rows, L]``) and optionally
  ``attention_mask`` (the same shape, 0/1; 0 marks padding), as a Hugging Face tokenizer gives
  them with ``padding=True, return_tensors="pt"`` (save them with ``safetensors.torch.save_file``);
* or a ``.txt`` file with ``--tokenizer DIR`` (a folder with a Hugging Face ``tokenizer.json``,
  read by the ``tokenizers`` library: data only, no code runs): its whole text is encoded
  (without special tokens) and cut into windows of L tokens; the last, partial window is
  filled with the tokenizer's pad id and masked (``attention_mask`` 0 there).

The rows are split into batches of ``--batch-size`` (default: the N of ``--input-ids``), each a
dict of keyword inputs ``{"input_ids": ..., "attention_mask": ...}``, which ``compress`` passes
to the model and whose padded positions count in no loss or choice. A last incomplete batch is
dropped (as for images). Every mistake is a :class:`~torchinn.cli.loading.CLIError` naming the
flag, the file and what is allowed.

>>> import torch
>>> batches, info = split_rows(torch.arange(12).reshape(6, 2), None, 4, "ids.safetensors", 100)
>>> len(batches), info["sequences"], info["dropped"], batches[0]["attention_mask"].sum().item()
(1, 4, 2, 8)
>>> split_rows(torch.tensor([[5, 120]]), None, 1, "ids.safetensors", 100)
Traceback (most recent call last):
...
torchinn.cli.loading.CLIError: --calibration 'ids.safetensors': input_ids must be token ids in [0, 100) (the vocabulary size of the model's input embedding), got 120 at row 0, position 1
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .loading import CLIError

__all__ = ["TOKEN_KEYS", "TOKEN_SUFFIXES", "load_token_batches", "read_safetensors", "read_text", "split_rows"]

#: the tensors a --calibration safetensors file may hold
TOKEN_KEYS = ("input_ids", "attention_mask")
#: the files --calibration takes with --input-ids
TOKEN_SUFFIXES = (".safetensors", ".txt")
_INTEGERS = ("I8", "I16", "I32", "I64", "U8", "U16", "U32", "U64")
_PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")


def _flag(path: str) -> str:
    return f"--calibration {path!r}"


def read_safetensors(path: str) -> tuple[Any, Any]:
    """``(input_ids, attention_mask or None)`` of a safetensors file, as int64 tensors, checked:
    only :data:`TOKEN_KEYS`, integer dtypes (a bool mask too), 2-D, equal shapes."""
    import numpy as np
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="np") as f:
            keys = list(f.keys())
            dtypes = {k: f.get_slice(k).get_dtype() for k in keys}
            other = [k for k in keys if k not in TOKEN_KEYS]
            if other:
                raise CLIError(f"{_flag(path)} holds {other}: a token calibration file holds only "
                               f"{list(TOKEN_KEYS)} (attention_mask optional)")
            if "input_ids" not in keys:
                raise CLIError(f"{_flag(path)} has no input_ids: a token calibration file holds {list(TOKEN_KEYS)} "
                               "(attention_mask optional)")
            for k in keys:
                allowed = _INTEGERS + (("BOOL",) if k == "attention_mask" else ())
                if dtypes[k] not in allowed:
                    raise CLIError(f"{_flag(path)}: {k} has dtype {dtypes[k]}; it must be an integer dtype "
                                   f"({', '.join(allowed)})")
            arrays = {k: f.get_tensor(k) for k in keys}
    except SafetensorError as err:
        raise CLIError(f"{_flag(path)}: not a safetensors file ({err}); give a .safetensors file of "
                       f"{list(TOKEN_KEYS)}, or a .txt file with --tokenizer DIR") from err
    ids, mask = arrays["input_ids"], arrays.get("attention_mask")
    if ids.ndim != 2 or 0 in ids.shape:
        raise CLIError(f"{_flag(path)}: input_ids has shape {list(ids.shape)}; it must be [rows, L] with rows, "
                       "L >= 1 (one tokenized sequence per row)")
    if mask is not None and mask.shape != ids.shape:
        raise CLIError(f"{_flag(path)}: attention_mask has shape {list(mask.shape)} but input_ids "
                       f"{list(ids.shape)}; they must be equal")
    if ids.dtype.kind == "u" and ids.max() > np.iinfo(np.int64).max:
        raise CLIError(f"{_flag(path)}: input_ids holds {ids.max()}, too large for a token id")
    if mask is not None:
        bad = ~np.isin(mask, (0, 1))
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            raise CLIError(f"{_flag(path)}: attention_mask must be 0 (padding) or 1 (a token), got "
                           f"{mask[row, col]} at row {row}, position {col}")
        mask = torch.from_numpy(mask.astype(np.int64))
    return torch.from_numpy(ids.astype(np.int64)), mask


def read_text(path: str, tokenizer_dir: str, length: int) -> tuple[Any, Any, dict]:
    """``(input_ids, attention_mask, info)``: the text of ``path`` encoded by the ``tokenizer.json``
    in ``tokenizer_dir`` and cut into rows of ``length`` tokens, the last one padded and masked."""
    import torch

    try:
        from tokenizers import Tokenizer
    except ImportError as err:
        raise CLIError("--tokenizer reads tokenizer.json with the tokenizers library: pip install tokenizers") from err
    folder = Path(tokenizer_dir)
    file = folder / "tokenizer.json" if folder.is_dir() else folder
    if not file.is_file() or file.name != "tokenizer.json":
        raise CLIError(f"--tokenizer {tokenizer_dir!r}: no tokenizer.json there; give the folder of a Hugging Face "
                       "tokenizer (the one save_pretrained writes, with its tokenizer.json)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:
        raise CLIError(f"--tokenizer {tokenizer_dir!r}: cannot read {str(file)!r} as a Hugging Face tokenizer.json: "
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise CLIError(f"{_flag(path)} is not UTF-8 text ({err.reason} at byte {err.start}); a .txt calibration "
                       "file is UTF-8 text") from err
    ids = tok.encode(text, add_special_tokens=False).ids
    if not ids:
        raise CLIError(f"{_flag(path)} has no tokens (an empty text); give a text to calibrate on")
    pad = tok.padding["pad_id"] if tok.padding else None
    pad = pad if pad is not None else next((t for t in map(tok.token_to_id, _PAD_TOKENS) if t is not None), 0)
    rows = -(-len(ids) // length)
    flat = torch.full((rows * length,), pad, dtype=torch.long)
    flat[: len(ids)] = torch.tensor(ids, dtype=torch.long)
    mask = torch.zeros(rows * length, dtype=torch.long)
    mask[: len(ids)] = 1
    info = {"tokenizer": str(file), "text_tokens": len(ids), "pad_id": pad}
    return flat.reshape(rows, length), mask.reshape(rows, length), info


def split_rows(ids: Any, mask: Any, batch_size: int, path: str, vocab: int | None) -> tuple[list[dict], dict]:
    """Batches of ``batch_size`` rows as dicts of keyword inputs (the mask: ones when None), after
    checking the ids against ``vocab`` (when known) and that every row has a token."""
    import torch

    if mask is None:
        mask = torch.ones_like(ids)
    if vocab is not None:
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            row, col = (int(v[0]) for v in bad.nonzero(as_tuple=True))
            raise CLIError(f"{_flag(path)}: input_ids must be token ids in [0, {vocab}) (the vocabulary size of "
                           f"the model's input embedding), got {ids[row, col].item()} at row {row}, position {col}")
    elif (ids < 0).any():
        raise CLIError(f"{_flag(path)}: input_ids must be token ids >= 0, got {ids.min().item()}")
    empty = (mask.sum(1) == 0).nonzero().flatten()
    if len(empty):
        raise CLIError(f"{_flag(path)}: row {empty[0].item()} of attention_mask is all 0 (every position padding); "
                       "every row needs at least one token")
    rows, length = ids.shape
    if rows < batch_size:
        raise CLIError(f"{_flag(path)} has {rows} sequence(s) of {length} tokens; a batch needs {batch_size} "
                       "(the N of --input-ids, or --batch-size): give more text or a smaller batch")
    used = rows // batch_size * batch_size
    batches = [{"input_ids": i, "attention_mask": m}
               for i, m in zip(ids[:used].split(batch_size), mask[:used].split(batch_size))]
    info = {"source": path, "sequences": used, "dropped": rows - used, "length": length, "batch_size": batch_size,
            "batches": len(batches), "tokens": int(mask[:used].sum()), "padded": int((mask[:used] == 0).sum())}
    return batches, info


def load_token_batches(path: str, tokenizer: str | None, shape: tuple[int, int], batch_size: int | None,
                       vocab: int | None) -> tuple[list[dict], dict]:
    """The calibration batches of ``--calibration path`` for ``--input-ids shape`` (see the module
    docstring) and their description for the report."""
    file = Path(path)
    if not file.exists():
        raise CLIError(f"{_flag(path)}: no such file; with --input-ids it is a .safetensors file of "
                       f"{list(TOKEN_KEYS)} or a .txt file with --tokenizer DIR")
    if not file.is_file():
        raise CLIError(f"{_flag(path)} is not a file (a folder of images goes with --input-shape); with --input-ids "
                       f"it is a .safetensors file of {list(TOKEN_KEYS)} or a .txt file with --tokenizer DIR")
    suffix = file.suffix.lower()
    if suffix not in TOKEN_SUFFIXES:
        raise CLIError(f"{_flag(path)}: with --input-ids the calibration file is a .safetensors file of "
                       f"{list(TOKEN_KEYS)} or a .txt file with --tokenizer DIR, got a {suffix or 'suffix-less'} file")
    n, length = shape
    extra: dict = {}
    if suffix == ".txt":
        if tokenizer is None:
            raise CLIError(f"{_flag(path)} is text: give --tokenizer DIR (a folder with the model's tokenizer.json) "
                           "to tokenize it, or a .safetensors file of input_ids")
        ids, mask, extra = read_text(path, tokenizer, length)
    else:
        if tokenizer is not None:
            raise CLIError(f"--tokenizer tokenizes a .txt --calibration file; {path!r} holds token ids already: "
                           "leave --tokenizer out")
        ids, mask = read_safetensors(path)
        if ids.shape[1] != length:
            raise CLIError(f"{_flag(path)} holds sequences of {ids.shape[1]} tokens, but --input-ids says "
                           f"{n},{length}: give --input-ids {n},{ids.shape[1]}")
    batches, info = split_rows(ids, mask, batch_size or n, path, vocab)
    info.update(extra)
    return batches, info
