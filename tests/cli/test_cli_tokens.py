"""``torchinn compress --input-ids N,L``: a transformers language model on token inputs (random ids
below its vocabulary, passed as input_ids= with an attention mask), and the errors around it."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from torchinn.cli.main import main

pytest.importorskip("transformers")

LLAMA = textwrap.dedent('''
    import torch
    import transformers

    def build():
        torch.manual_seed(0)
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        return transformers.LlamaForCausalLM(cfg).eval()

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
''')


def test_compress_a_language_model_on_token_ids(tmp_path, capsys) -> None:
    (tmp_path / "clillama.py").write_text(LLAMA)
    out = tmp_path / "small.pt"
    code = main(["compress", f"{tmp_path / 'clillama.py'}:build", "--input-ids", "2,12", "--target", "0.6",
                 "--seconds", "0", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "random token ids of shape 2x12; this is only a smoke test" in err
    report = json.loads((tmp_path / "small.pt.report.json").read_text())
    assert report["input_ids"] == [2, 12] and report["input_shapes"] == []
    assert report["params_after"] < 0.65 * report["params_before"]
    small = torch.load(out, weights_only=False)
    ids = torch.randint(0, 64, (2, 12))
    logits = small(input_ids=ids, attention_mask=torch.ones_like(ids))["logits"]  # the graph module: a dict
    assert logits.shape == (2, 12, 64)


@pytest.mark.parametrize("argv,message", [
    (["--input-ids", "2"], "--input-ids is two positive integers N,L"),
    (["--input-ids", "2,0"], "--input-ids is two positive integers N,L"),
    (["--input-ids", "a,b"], "--input-ids is N,L: N sequences of L tokens"),
    (["--input-ids", "2,8", "--input-shape", "2,4"], "not allowed with argument"),
    ([], "one of the arguments --input-shape --input-ids is required"),
])
def test_bad_token_arguments(argv, message, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["compress", "x.py:build", "--target", "0.5", "-o", str(tmp_path / "o.pt"), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
