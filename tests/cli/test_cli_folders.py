"""``torchinn compress`` of a Hugging Face model folder, written to a folder ``-o`` with
torchinn.io.save_pretrained (per-layer sizes; ``--pad`` for plain transformers), and the errors
around folders."""

from __future__ import annotations

import json

import pytest
import torch

from torchinn.cli.main import main

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torchinn as inn  # noqa: E402


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "llama"
    _llama().save_pretrained(d)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    return d


def _compress(model, out, capsys, *extra):
    code = main(["compress", str(model), "--input-ids", "2,12", "--target", "0.6", "--seconds", "0",
                 "-o", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _mlp_widths(model) -> list[int]:
    return [layer.mlp.up_proj.out_features for layer in model.model.layers]


def test_plain_transformers_folder_loads(hf_folder) -> None:
    back = inn.io.load_pretrained(hf_folder)  # no torchinn_shapes.json: the sizes of its config
    ref = transformers.LlamaForCausalLM.from_pretrained(hf_folder).eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    assert type(back) is transformers.LlamaForCausalLM and _mlp_widths(back) == [64, 64]
    assert torch.equal(back(ids).logits, ref(ids).logits)


def test_compress_a_folder_to_a_folder(hf_folder, tmp_path, capsys) -> None:
    out = tmp_path / "small"
    code, stdout, err = _compress(hf_folder, f"{out}/", capsys)
    assert code == 0, err
    assert "cannot be described by its" not in err  # the warning's advice is what -o DIR/ does
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small", "small.report.json", "small.report.txt"]
    assert (out / "torchinn_shapes.json").is_file()
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["load_with"] == "torchinn.io.load_pretrained(path)" and report["model"] == str(hf_folder)
    assert f"wrote {out} (load with torchinn.io.load_pretrained(path))" in stdout
    back = inn.io.load_pretrained(out)
    assert type(back) is transformers.LlamaForCausalLM
    sizes = {name: after for name, (before, after) in report["sizes"].items()}  # name: [before, after]
    mlp = [sizes[f"model.layers.{i}.mlp.gate_proj.weight:0"] for i in range(2)]
    assert _mlp_widths(back) == mlp and max(mlp) < 64
    assert [layer.self_attn.q_proj.out_features // 8 for layer in back.model.layers] == \
        [sizes[f"model.layers.{i}.self_attn.q_proj.weight:0"] * 2 for i in range(2)]  # 8 = head_dim; 2 per kv group
    assert sum(p.numel() for p in back.parameters()) == report["params_after"] < 0.65 * report["params_before"]
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(4))
    logits = back(ids).logits
    assert logits.shape == (2, 12, 64) and torch.isfinite(logits).all()
    original = _llama()(ids).logits  # the weights of hf_folder: close to, not equal to, the compressed logits
    assert 0 < (logits - original).abs().max() < original.abs().max()


def test_pad_writes_a_folder_plain_transformers_loads(hf_folder, tmp_path, capsys) -> None:
    out = tmp_path / "padded"
    out.mkdir()  # an existing empty folder is a folder -o without the slash
    code, stdout, err = _compress(hf_folder, out, capsys, "--pad")
    assert code == 0, err
    assert "load with transformers' from_pretrained(path)" in stdout
    plain = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    ours = inn.io.load_pretrained(out)
    assert _mlp_widths(plain) == _mlp_widths(ours) == [max(_mlp_widths(ours))] * 2
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(plain(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["padded", "padded.report.json", "padded.report.txt"]


def test_folder_errors(hf_folder, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code, _, err = _compress("empty", "o.pt", capsys)
    assert code == 1 and err == ("torchinn: error: MODEL 'empty' is a directory without config.json; expected a "
                                 "Hugging Face model folder (config.json and model.safetensors), a model file or "
                                 "module:callable\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, _, err = _compress(hf_folder, "full", capsys)
    assert code == 1 and err == ("torchinn: error: -o 'full' is a folder that is not empty; give a new or empty "
                                 "folder, or pass --force to replace its contents\n")
    (tmp_path / "mlp.py").write_text("import torch\ndef build():\n    return torch.nn.Sequential(torch.nn.Embedding("
                                     "8, 4), torch.nn.Linear(4, 2))\n")
    code, _, err = _compress("mlp.py:build", "new/", capsys)
    assert code == 1 and err == ("torchinn: error: -o 'new/' is a folder, and folders are for transformers models "
                                 "(written as a Hugging Face folder); Sequential is not one: give a file name like "
                                 "small.pt\n")
    assert not (tmp_path / "new").exists()  # nothing made for it
    code, _, err = _compress(hf_folder, "x.pt", capsys, "--pad")
    assert code == 1 and err.startswith("torchinn: error: --pad pads a Hugging Face folder for transformers' "
                                        "from_pretrained; -o 'x.pt' is a file")
    (tmp_path / "sharded").mkdir()
    (tmp_path / "sharded" / "config.json").write_text((hf_folder / "config.json").read_text())
    (tmp_path / "sharded" / "model.safetensors.index.json").write_text("{}")
    code, _, err = _compress("sharded", "o.pt", capsys)
    assert code == 1 and err == ("torchinn: error: cannot read MODEL 'sharded' as a Hugging Face model folder: "
                                 "sharded has no model.safetensors: its weights are sharded "
                                 "(model.safetensors.index.json), which torchinn does not read; save the model "
                                 "again with a max_shard_size above its size for one file; a Hugging Face model "
                                 "folder holds config.json and model.safetensors (and, from "
                                 "torchinn.io.save_pretrained, torchinn_shapes.json)\n")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_force_replaces_a_folder_whole(hf_folder, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, _, err = _compress(hf_folder, out, capsys, "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "torchinn_shapes.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.report.json", "out.report.txt"]  # no temp left
    assert type(inn.io.load_pretrained(out)) is transformers.LlamaForCausalLM
