"""``torchinn compress --input-ids N,L --calibration FILE``: a language model calibrated on tokenized
text (a safetensors file of input_ids / attention_mask, or a .txt file with --tokenizer), in
batches of keyword inputs with padding masked, and every mistake in the file named."""

from __future__ import annotations

import json

import pytest
import torch

from torchinn.cli.loading import CLIError
from torchinn.cli.main import main
from torchinn.cli.tokens import load_token_batches

pytest.importorskip("transformers")
save_file = pytest.importorskip("safetensors.torch").save_file

from test_cli_tokens import LLAMA  # noqa: E402  (the tiny LlamaForCausalLM, vocabulary 64)

WORDS = "the cat sat on a mat and then it ran off to see the dog".split()  # 15 words, 14 distinct
TEXT = " ".join(WORDS + WORDS)  # 30 tokens


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """clillama.py, tok/tokenizer.json (a word-level tokenizer whose pad id is 5), text.txt and
    ids.safetensors (6 rows of 12 tokens, rows 1 and 4 right-padded)."""
    tokenizers = pytest.importorskip("tokenizers")
    d = tmp_path_factory.mktemp("calib")
    (d / "clillama.py").write_text(LLAMA)
    vocab, free = {"[UNK]": 0, "<pad>": 5}, (i for i in range(1, 64) if i != 5)
    vocab.update((w, next(free)) for w in dict.fromkeys(WORDS))
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (d / "tok").mkdir()
    tok.save(str(d / "tok" / "tokenizer.json"))
    (d / "text.txt").write_text(TEXT)
    ids = torch.randint(1, 64, (6, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(6, 12, dtype=torch.long)
    mask[1, 9:] = 0
    mask[4, 5:] = 0
    save_file({"input_ids": ids * mask, "attention_mask": mask}, str(d / "ids.safetensors"))
    return d


def _compress(work, capsys, *argv):
    code = main(["compress", f"{work / 'clillama.py'}:build", "--target", "0.6", "--seconds", "0", "--no-progress",
                 *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_safetensors_calibration_with_padding(work, capsys) -> None:
    out_file = work / "out" / "small.pt"
    code, out, err = _compress(work, capsys, "--input-ids", "2,12", "--calibration", str(work / "ids.safetensors"),
                               "-o", str(out_file))
    assert code == 0, err
    assert "smoke test" not in err
    assert "6 sequences of 12 tokens from" in out and "10 padded positions masked" in out
    report = json.loads((work / "out" / "small.pt.report.json").read_text())
    cal = report["calibration"]
    assert (cal["sequences"], cal["dropped"], cal["batches"], cal["batch_size"]) == (6, 0, 3, 2)
    assert (cal["tokens"], cal["padded"], cal["length"]) == (62, 10, 12)
    assert report["params_after"] < 0.65 * report["params_before"]
    small = torch.load(out_file, weights_only=False)
    ids = torch.randint(0, 64, (2, 12))
    assert small(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"].shape == (2, 12, 64)


def test_text_calibration_with_a_tokenizer(work, capsys) -> None:
    out_file = work / "out" / "text.pt"
    code, out, err = _compress(work, capsys, "--input-ids", "1,8", "--batch-size", "2", "--calibration",
                               str(work / "text.txt"), "--tokenizer", str(work / "tok"), "-o", str(out_file))
    assert code == 0, err
    cal = json.loads((work / "out" / "text.pt.report.json").read_text())["calibration"]
    # 30 tokens: 4 windows of 8, the last with 6 tokens and 2 pads; batches of 2
    assert (cal["text_tokens"], cal["sequences"], cal["batches"], cal["padded"], cal["pad_id"]) == (30, 4, 2, 2, 5)
    assert "4 sequences of 8 tokens from" in out and "2 padded positions masked" in out


def test_text_windows_are_the_tokens_in_order_then_padding(work) -> None:
    batches, info = load_token_batches(str(work / "text.txt"), str(work / "tok"), (3, 8), None, 64)
    assert len(batches) == 1 and info["dropped"] == 1  # 4 windows, batches of 3: the last one dropped
    batches, _ = load_token_batches(str(work / "text.txt"), str(work / "tok"), (4, 8), None, 64)
    ids, mask = batches[0]["input_ids"], batches[0]["attention_mask"]
    import tokenizers

    expected = tokenizers.Tokenizer.from_file(str(work / "tok" / "tokenizer.json")).encode(TEXT).ids
    assert ids.dtype == torch.long and ids.flatten()[:30].tolist() == expected
    assert ids[3, 6:].tolist() == [5, 5] and mask[3].tolist() == [1] * 6 + [0, 0]
    assert int(mask.sum()) == 30


def _file(work, name, tensors):
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(work / name))
    return str(work / name)


IDS = torch.ones(4, 6, dtype=torch.long)


@pytest.mark.parametrize("make,argv,message", [
    (lambda w: _file(w, "extra.safetensors", {"input_ids": IDS, "labels": IDS, "position_ids": IDS}), [],
     "holds ['labels', 'position_ids']: a token calibration file holds only ['input_ids', 'attention_mask']"),
    (lambda w: _file(w, "noids.safetensors", {"attention_mask": IDS}), [],
     "has no input_ids: a token calibration file holds ['input_ids', 'attention_mask']"),
    (lambda w: _file(w, "float.safetensors", {"input_ids": IDS.float()}), [],
     "input_ids has dtype F32; it must be an integer dtype (I8, I16, I32, I64, U8, U16, U32, U64)"),
    (lambda w: _file(w, "shape.safetensors", {"input_ids": IDS, "attention_mask": IDS[:, :5]}), [],
     "attention_mask has shape [4, 5] but input_ids [4, 6]; they must be equal"),
    (lambda w: _file(w, "onedim.safetensors", {"input_ids": IDS[0]}), [],
     "input_ids has shape [6]; it must be [rows, L]"),
    (lambda w: _file(w, "mask2.safetensors", {"input_ids": IDS, "attention_mask": IDS.index_fill(1, torch.tensor([3]), 2)}),
     [], "attention_mask must be 0 (padding) or 1 (a token), got 2 at row 0, position 3"),
    (lambda w: _file(w, "pads.safetensors", {"input_ids": IDS, "attention_mask": IDS.index_fill(0, torch.tensor([2]), 0)}),
     [], "row 2 of attention_mask is all 0 (every position padding)"),
    (lambda w: _file(w, "vocab.safetensors", {"input_ids": IDS.index_fill(1, torch.tensor([4]), 64)}), [],
     "input_ids must be token ids in [0, 64) (the vocabulary size of the model's input embedding), got 64 at row 0, "
     "position 4"),
    (lambda w: _file(w, "neg.safetensors", {"input_ids": IDS.index_fill(1, torch.tensor([4]), -1)}), [],
     "got -1 at row 0, position 4"),
    (lambda w: _file(w, "few.safetensors", {"input_ids": IDS[:1]}), [],
     "has 1 sequence(s) of 6 tokens; a batch needs 2 (the N of --input-ids, or --batch-size)"),
    (lambda w: _file(w, "ok.safetensors", {"input_ids": IDS}), ["--batch-size", "5"], "a batch needs 5"),
    (lambda w: _file(w, "len.safetensors", {"input_ids": IDS[:, :5]}), [],
     "holds sequences of 5 tokens, but --input-ids says 2,6: give --input-ids 2,5"),
    (lambda w: str(w / "missing.safetensors"), [], "missing.safetensors': no such file; with --input-ids it is a "
     ".safetensors file of ['input_ids', 'attention_mask'] or a .txt file with --tokenizer DIR"),
    (lambda w: str(w / "tok"), [], "is not a file (a folder of images goes with --input-shape)"),
    (lambda w: str(w / "clillama.py"), [], "the calibration file is a .safetensors file of ['input_ids', "
     "'attention_mask'] or a .txt file with --tokenizer DIR, got a .py file"),
    (lambda w: str(w / "text.txt"), [], "is text: give --tokenizer DIR"),
    (lambda w: _file(w, "tokd.safetensors", {"input_ids": IDS}), ["--tokenizer", "tok"],
     "--tokenizer tokenizes a .txt --calibration file"),
    (lambda w: str(w / "text.txt"), ["--tokenizer", "."], "--tokenizer '.': no tokenizer.json there"),
    (lambda w: (w / "fake.safetensors").write_text("not really") and str(w / "fake.safetensors"), [],
     "fake.safetensors': not a safetensors file"),
    (lambda w: (w / "latin.txt").write_bytes(b"caf\xe9") and str(w / "latin.txt"), ["--tokenizer", "tok"],
     "latin.txt' is not UTF-8 text"),
    (lambda w: (w / "empty.txt").write_text("") or str(w / "empty.txt"), ["--tokenizer", "tok"],
     "has no tokens (an empty text)"),
    (lambda w: _file(w, "m.safetensors", {"input_ids": IDS}), ["--mean", "0.5"], "--mean/--std normalise"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_calibration_file_errors(make, argv, message, work, capsys, monkeypatch) -> None:
    monkeypatch.chdir(work)
    path = make(work)
    code, _, err = _compress(work, capsys, "--input-ids", "2,6", "--calibration", path, "-o", "o.pt", *argv)
    assert code == 1 and err.startswith("torchinn: error: --") and message in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv,message", [
    (["--input-shape", "2,4", "--tokenizer", "tok"], "--tokenizer is for a language model's --calibration text"),
    (["--input-shape", "2,4", "--batch-size", "2"], "--batch-size is for a language model's --calibration text"),
    (["--input-ids", "2,6", "--batch-size", "2"], "--batch-size goes with --calibration FILE"),
    (["--input-shape", "2,4", "--calibration", "ids.safetensors"],
     "is not a directory of images (a .safetensors or .txt file of tokens goes with --input-ids N,L)"),
])
def test_token_flags_in_the_wrong_place(argv, message, work, capsys, monkeypatch) -> None:
    monkeypatch.chdir(work)
    code = main(["compress", "clillama.py:mlp", "--target", "0.5", "-o", "o.pt", *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err, err


def test_a_model_without_an_embedding_skips_the_vocabulary_check(work) -> None:
    batches, info = load_token_batches(str(work / "ids.safetensors"), None, (3, 12), None, None)
    assert [b["input_ids"].shape for b in batches] == [(3, 12), (3, 12)] and info["tokens"] == 62
    with pytest.raises(CLIError, match=r"input_ids must be token ids in \[0, 10\) .*got \d+ at row 0, position 0"):
        load_token_batches(str(work / "ids.safetensors"), None, (3, 12), None, 10)


def test_elastic_trains_a_language_model_on_token_text_and_resize_writes_it(work, capsys) -> None:
    out_dir = work / "el"
    code = main(["elastic", f"{work / 'clillama.py'}:build", "--input-ids", "2,12", "--calibration",
                 str(work / "ids.safetensors"), "--steps", "2", "-o", str(out_dir / "lm.inn")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "smoke test" not in err and "6 sequences of 12 tokens from" in out and "elastic: 2 steps" in out
    report = json.loads((out_dir / "lm.inn.report.json").read_text())
    assert report["calibration"]["padded"] == 10 and report["steps"] == 2
    code = main(["resize", str(out_dir / "lm.inn"), "--target", "0.7", "-o", str(out_dir / "small.pt")])
    out, err = capsys.readouterr()
    assert code == 0, err
    small = torch.load(out_dir / "small.pt", weights_only=False)
    ids = torch.randint(1, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = small(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]
    assert logits.shape == (2, 12, 64) and torch.isfinite(logits).all()
    assert f"{sum(p.numel() for p in small.parameters()):,} parameters" in out


def test_elastic_token_flags_are_checked_as_compress_checks_them(work, capsys) -> None:
    code = main(["elastic", f"{work / 'clillama.py'}:build", "--input-shape", "2,3,8,8", "--tokenizer",
                 str(work / "tok"), "--steps", "1", "-o", str(work / "x.inn")])
    assert code == 1 and "--tokenizer is for a language model's --calibration text" in capsys.readouterr().err
