"""torchinn.io.save_pretrained / load_pretrained: Hugging Face folders for models whose layers have
different sizes (a shapes file read by torchinn, or padded with zeros for plain transformers), and
the errors a tampered folder gets. Tiny random configs: nothing downloads."""

from __future__ import annotations

import functools
import json
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import torchinn as inn
from torchinn.discrete.hf_config import ConfigMismatchError
from torchinn.io import FormatError, PaddingError, load_pretrained, save_pretrained

tf = pytest.importorskip("transformers")

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV = 64, 32, 64, 3, 4, 2
IDS = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))


@functools.cache
def _llama():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64,
                         tie_word_embeddings=True)  # as SmolLM2: lm_head shares the embedding
    model = tf.LlamaForCausalLM(cfg).eval()
    return model, inn.convert(model, {"input_ids": IDS}, inn.ConvertConfig(tsp_time_limit=0.05))


@functools.cache
def _gpt2():
    torch.manual_seed(0)
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    model = tf.GPT2LMHeadModel(cfg).eval()
    return model, inn.convert(model, {"input_ids": IDS}, inn.ConvertConfig(tsp_time_limit=0.05))


def _discrete(imodel, sizes):
    full = imodel.sizes()
    try:
        imodel.resize(sizes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # per-layer sizes: the config cannot say them
            return imodel.to_discrete()
    finally:
        imodel.resize(full)


def _llama_sizes(mlp: list[int], kv: list[int]) -> dict[str, int]:
    _, imodel = _llama()
    out = {}
    for g in imodel.groups:
        layer = int(g.split(".")[2])
        out[g] = mlp[layer] if ".mlp." in g else kv[layer]
    return out


def _per_layer_llama():
    return _discrete(_llama()[1], _llama_sizes([40, 64, 30], [1, 2, 1]))


def test_llama_per_layer_sizes_round_trip(tmp_path: Path) -> None:
    """Different MLP widths and kv heads per layer: the folder loads back as a LlamaForCausalLM
    with identical logits, generates, and its own save_pretrained still refuses (naming the way)."""
    small = _per_layer_llama()
    assert small.model.layers[0].self_attn.k_proj.out_features == 8  # 1 kv head of 8
    save_pretrained(small, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "torchinn_shapes.json"]
    shapes = json.loads((tmp_path / "out" / "torchinn_shapes.json").read_text())
    assert (shapes["format"], shapes["version"], shapes["architecture"]) == ("torchinn-shapes", 1, "LlamaForCausalLM")
    assert shapes["modules"]["model.layers.2.mlp.up_proj"] == {
        "type": "torch.nn.modules.linear.Linear", "args": {"bias": False, "in_features": 32, "out_features": 30}}
    assert not any(k.startswith("model.layers.1.") for k in shapes["modules"])  # layer 1 is at full size
    assert "lm_head.weight" not in load_file(tmp_path / "out" / "model.safetensors")  # tied: stored once
    back = load_pretrained(tmp_path / "out")
    assert type(back) is tf.LlamaForCausalLM and not back.training
    assert back.lm_head.weight is back.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, small(IDS).logits)
    assert sum(p.numel() for p in back.parameters()) == sum(p.numel() for p in small.parameters())
    kw = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(back.generate(IDS, **kw), small.generate(IDS, **kw))
    with pytest.raises(ConfigMismatchError, match=r"refusing to save_pretrained: this LlamaForCausalLM has sizes its "
                                                  r"LlamaConfig cannot describe .*torchinn\.io\.save_pretrained"
                                                  r"\(model, directory\), or with pad=True"):
        back.save_pretrained(tmp_path / "again")


def test_to_discrete_refusal_names_torchinn_save_pretrained(tmp_path: Path) -> None:
    with pytest.raises(ConfigMismatchError, match=r"the sizes differ between layers .*save it with "
                                                  r"torchinn\.io\.save_pretrained\(model, directory\) .*pad=True"):
        _per_layer_llama().save_pretrained(tmp_path / "x")


def test_llama_padded_loads_with_plain_transformers(tmp_path: Path) -> None:
    """pad=True: each layer padded with zeros to the largest sizes (kv heads 2, MLP 64 here), the
    config set to them; plain from_pretrained loads it, logits within 1e-5 (zeros add exactly, but
    the longer sums may be blocked differently)."""
    small = _per_layer_llama()
    save_pretrained(small, tmp_path / "pad", pad=True)
    plain = tf.LlamaForCausalLM.from_pretrained(tmp_path / "pad").eval()
    assert (plain.config.num_key_value_heads, plain.config.num_attention_heads, plain.config.intermediate_size) \
        == (2, 4, 64)
    assert plain.model.layers[0].mlp.up_proj.weight[40:].abs().max() == 0  # the padded channels
    assert plain.model.layers[0].self_attn.o_proj.weight[:, 16:].abs().max() == 0  # layer 0 had 2 q heads
    with torch.no_grad():
        want, got = small(IDS).logits, plain(IDS).logits
    assert float((want - got).abs().max()) <= 1e-5
    assert small.config.num_key_value_heads == KV and small.model.layers[0].mlp.up_proj.out_features == 40  # unchanged


def test_llama_padded_to_the_largest_layer_is_smaller(tmp_path: Path) -> None:
    """When every layer shrank, the padded config is the largest layer's sizes, not the original ones."""
    small = _discrete(_llama()[1], _llama_sizes([40, 24, 30], [1, 1, 1]))
    save_pretrained(small, tmp_path / "pad", pad=True)
    plain = tf.LlamaForCausalLM.from_pretrained(tmp_path / "pad").eval()
    assert (plain.config.num_key_value_heads, plain.config.intermediate_size) == (1, 40)
    with torch.no_grad():
        assert float((small(IDS).logits - plain(IDS).logits).abs().max()) <= 1e-5


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mlp=st.lists(st.integers(1, FFN), min_size=LAYERS, max_size=LAYERS),
       kv=st.lists(st.integers(1, KV), min_size=LAYERS, max_size=LAYERS))
def test_any_per_layer_sizes_round_trip(mlp: list[int], kv: list[int]) -> None:
    small = _discrete(_llama()[1], _llama_sizes(mlp, kv))
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(small, d)
        back = load_pretrained(d)
        save_pretrained(small, Path(d) / "pad", pad=True)
        plain = tf.LlamaForCausalLM.from_pretrained(Path(d) / "pad").eval()
    with torch.no_grad():
        want = small(IDS).logits
        assert torch.equal(back(IDS).logits, want)
        assert float((plain(IDS).logits - want).abs().max()) <= 1e-5
    assert plain.config.intermediate_size == max(mlp) and plain.config.num_key_value_heads == max(kv)


def test_gpt2_fewer_heads_per_layer_round_trip_and_refuse_padding(tmp_path: Path) -> None:
    """GPT-2 derives the head size as n_embd / n_head: fewer heads (1 in layer 0, 3 in layer 1)
    round-trip through the shapes file (split_size and num_heads set per layer); pad=True refuses."""
    model, imodel = _gpt2()
    heads = sorted(g for g, s in imodel.sizes().items() if s == HEADS)
    small = _discrete(imodel, {heads[0]: 1, heads[1]: 3})
    save_pretrained(small, tmp_path / "gpt2")
    shapes = json.loads((tmp_path / "gpt2" / "torchinn_shapes.json").read_text())
    assert shapes["attributes"]["transformer.h.0.attn"] == {"num_heads": 1, "split_size": 8}
    assert shapes["modules"]["transformer.h.1.attn.c_attn"] == {
        "type": "transformers.pytorch_utils.Conv1D", "args": {"nf": 72, "nx": 32}}
    back = load_pretrained(tmp_path / "gpt2")
    assert type(back) is type(model) and back.transformer.h[1].attn.num_heads == 3
    with torch.no_grad():
        assert torch.equal(back(IDS).logits, small(IDS).logits)
    with pytest.raises(PaddingError, match=r"cannot pad tensor 'transformer\.h\.0\.attn\.c_attn\.bias' \(shape \(24,\), "
                                           r"where the config builds \(96,\)\): .*GPT2Config has no head_dim field \(the "
                                           r"head size is derived as hidden size / heads\), so fewer heads cannot be "
                                           r"padded"):
        save_pretrained(small, tmp_path / "pad", pad=True)


def test_uniform_gpt2_mlp_pads_to_itself(tmp_path: Path) -> None:
    """Sizes the config can say: the padded folder is the model's own sizes (nothing padded)."""
    _, imodel = _gpt2()
    small = _discrete(imodel, {g: s if s == HEADS else 20 for g, s in imodel.sizes().items()})
    save_pretrained(small, tmp_path / "g", pad=True)
    plain = tf.GPT2LMHeadModel.from_pretrained(tmp_path / "g").eval()
    assert plain.config.n_inner == 20
    with torch.no_grad():
        assert torch.equal(plain(IDS).logits, small(IDS).logits)


@functools.cache
def _saved() -> Path:
    folder = Path(tempfile.mkdtemp()) / "saved"
    save_pretrained(_per_layer_llama(), folder)
    return folder


def _tampered(tmp_path: Path, file: str, change) -> Path:
    folder = tmp_path / "t"
    folder.mkdir()
    for f in _saved().iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if file.endswith(".json"):
        data = json.loads((folder / file).read_text())
        change(data)
        (folder / file).write_text(json.dumps(data))
    else:
        tensors = load_file(folder / file)
        change(tensors)
        save_file(tensors, folder / file)
    return folder


def _set_attr(d, attr, value):
    d["attributes"]["model.layers.0.self_attn"] = {attr: value}


TAMPERED = {
    "unknown attribute": ("torchinn_shapes.json", lambda d: _set_attr(d, "training", 1),
                          r"attributes\['model\.layers\.0\.self_attn'\]: 'training' is not an attribute a shapes file "
                          r"may set \(allowed: the integer attributes \["),
    "non-integer size": ("torchinn_shapes.json",
                         lambda d: d["modules"]["model.layers.0.mlp.up_proj"]["args"].update(out_features=40.5),
                         r"modules\['model\.layers\.0\.mlp\.up_proj'\]\.args\.out_features must be an int in "
                         r"\[1, 2147483648\), got 40\.5"),
    "not a transformers model": ("config.json", lambda d: d.update(architectures=["os.system"]),
                                 r"config\.json: architectures is \['os\.system'\], which does not name one "
                                 r"transformers model class \(looked up in transformers' auto model mappings"),
    "missing tensor": ("model.safetensors", lambda t: t.pop("model.layers.1.mlp.down_proj.weight"),
                       r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.down_proj\.weight' \(shape \(32, 64\)\) "
                       r"is missing"),
    "unexpected tensor": ("model.safetensors", lambda t: t.update(extra=torch.zeros(2)),
                          r"tensor 'extra' is not a parameter or buffer of LlamaForCausalLM"),
    "wrong shape": ("model.safetensors", lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(41, 32)}),
                    r"tensor 'model\.layers\.0\.mlp\.up_proj\.weight' has shape \(41, 32\), but LlamaForCausalLM at "
                    r"the sizes of torchinn_shapes\.json has \(40, 32\) there"),
    "other module type": ("torchinn_shapes.json",
                          lambda d: d["modules"]["model.layers.0.mlp.up_proj"].update(type="builtins.eval"),
                          r"modules\['model\.layers\.0\.mlp\.up_proj'\]\.type is 'builtins\.eval', but the config "
                          r"builds a torch\.nn\.modules\.linear\.Linear there"),
    "unknown module": ("torchinn_shapes.json", lambda d: d["modules"].update({"model.nope": {}}),
                       r"modules: \['model\.nope'\] not among the modules of the model config\.json builds"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_folder_gets_a_named_error(case: str, tmp_path: Path) -> None:
    file, change, message = TAMPERED[case]
    folder = _tampered(tmp_path, file, change)
    with pytest.raises(FormatError, match=message):
        load_pretrained(folder)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"needs a transformers model \(a PreTrainedModel with a config\), got Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(FormatError, match=r"has no config\.json: a Hugging Face model folder holds config\.json and "
                                          r"model\.safetensors \(and, from torchinn\.io\.save_pretrained, "
                                          r"torchinn_shapes\.json\)$"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(FormatError, match=r"has no model\.safetensors: its weights are in pytorch_model\.bin, a "
                                          r"pickle that torchinn does not read; a Hugging Face model folder holds"):
        load_pretrained(tmp_path)
    with pytest.raises(FormatError, match=r"config\.json is not a folder: load_pretrained reads a Hugging Face model "
                                          r"folder"):
        load_pretrained(tmp_path / "config.json")


def test_folder_without_shapes_file_loads_at_the_config_sizes(tmp_path: Path) -> None:
    model, _ = _llama()
    model.save_pretrained(tmp_path / "plain")  # transformers' own folder: no torchinn_shapes.json
    back = load_pretrained(tmp_path / "plain")
    ids = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(2))
    assert type(back) is type(model) and torch.equal(back(ids).logits, model(ids).logits)
    small = _per_layer_llama()
    save_pretrained(small, tmp_path / "small")
    (tmp_path / "small" / "torchinn_shapes.json").unlink()  # per-layer sizes without the file that says them
    with pytest.raises(FormatError, match=r"tensor 'model\.layers\.0\.self_attn\.q_proj\.weight' has shape "
                                          r"\(16, 32\), but LlamaForCausalLM at the sizes of config\.json \(the "
                                          r"folder has no torchinn_shapes\.json\) has \(32, 32\) there"):  # 1 kv head
        load_pretrained(tmp_path / "small")
