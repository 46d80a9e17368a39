"""Hugging Face transformers at their default settings (``use_cache=True``, keyword inputs):
Llama / Qwen2 / Mistral (grouped-query attention and rotary embeddings), GPT-2 (a fused
``Conv1D`` q/k/v), BERT (token type and position id buffers) and ViT, built from tiny random
configs (nothing downloads). Attention heads are removed whole; MLP widths are per-layer groups;
the hidden size stays unless asked."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

import torchinn as inn
from torchinn.discrete.hf_config import ConfigMismatchError

tf = pytest.importorskip("transformers")

VOCAB, HIDDEN, FFN, LAYERS, HEADS, KV_HEADS = 64, 32, 64, 2, 4, 2
HEAD = HIDDEN // HEADS


def _causal(kind: str, **extra):
    cfg_cls, model_cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                          "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                          "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
                          "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM)}[kind]
    if kind == "phi3":  # its default token ids are outside a vocabulary of 64
        extra = {"pad_token_id": 0, "bos_token_id": 0, "eos_token_id": 0, **extra}
    cfg = cfg_cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
                  **extra)
    return model_cls(cfg)


def _decoder(kind: str):
    """Qwen3 (q/k norms), Gemma2 (GeGLU, scaled embeddings, soft-capping, sliding window),
    GPT-NeoX / Pythia (fused per-head q|k|v, parallel residual, partial rotary) and OPT (learned
    positions, ReLU MLP)."""
    gqa = {"num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD}
    common = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "max_position_embeddings": 64}
    if kind == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(intermediate_size=FFN, **gqa, **common))
    if kind == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(intermediate_size=FFN, sliding_window=8, **gqa, **common))
    if kind == "neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(intermediate_size=FFN, num_attention_heads=HEADS,
                                                      rotary_pct=0.25, **common))
    return tf.OPTForCausalLM(tf.OPTConfig(ffn_dim=FFN, num_attention_heads=HEADS, word_embed_proj_dim=HIDDEN,
                                          pad_token_id=1, **common))


def _gpt2(attn: str = "sdpa"):
    cfg = tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    cfg._attn_implementation = attn
    return tf.GPT2LMHeadModel(cfg)


def _bert():
    cfg = tf.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=64)
    return tf.BertModel(cfg)


def _vit():
    cfg = tf.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, intermediate_size=FFN)
    return tf.ViTForImageClassification(cfg)


#: configs with no head size field: the head size is hidden_size / heads (ViT's config has head_dim)
DERIVED_HEAD_SIZE = ("gpt2", "gpt2_eager", "bert", "neox", "opt")

MODELS = {"llama": lambda: _causal("llama"), "qwen2": lambda: _causal("qwen2"),
          "mistral": lambda: _causal("mistral"), "phi3": lambda: _causal("phi3"), "gpt2": _gpt2, "gpt2_eager": lambda: _gpt2("eager"),
          "bert": _bert, "vit": _vit, **{k: functools.partial(_decoder, k) for k in ("qwen3", "gemma2", "neox", "opt")}}


def _inputs(name: str, batch: int = 2, length: int = 10) -> dict:
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, :3] = 0  # left padding in the last sequence
    return {"input_ids": torch.randint(0, VOCAB, (batch, length), generator=g), "attention_mask": mask}


def _main(out) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out[0]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@functools.cache
def _converted(name: str, hidden: bool | None = None):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = MODELS[name]().eval()
    config = inn.ConvertConfig(tsp_time_limit=0.05, hidden=hidden)
    return model, inn.convert(model, _inputs(name), config)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_default_settings_exact_and_half_heads(name: str) -> None:
    model, imodel = _converted(name)
    if hasattr(model.config, "use_cache"):
        assert model.config.use_cache is True  # converted at the default, and left as it was
    kw = _inputs(name)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback to the graph module
        ref = _main(model(**kw))
        assert _rel(ref, _main(imodel(**kw))) <= 1e-5
        own = imodel.to_discrete()
        assert type(own) is type(model)  # the user's class back
        assert _rel(ref, _main(own(**kw))) <= 1e-5
        assert _rel(ref, _main(imodel.to_discrete(graph=True)(**kw))) <= 1e-5
        heads = {g: s for g, s in imodel.sizes().items() if s in (HEADS, KV_HEADS)}
        assert len(heads) == LAYERS  # one head group per layer, nothing else of that size
        full = imodel.sizes()
        try:
            imodel.resize({g: s // 2 for g, s in full.items()})
            small = _main(imodel(**kw))
            if name in DERIVED_HEAD_SIZE:  # fewer heads: the config cannot say them (see below)
                with pytest.warns(UserWarning, match="cannot be described by its"):
                    own = imodel.to_discrete()
            else:
                own = imodel.to_discrete()
            discrete = _main(own(**kw))
            other = _main(imodel(**_inputs(name, batch=1, length=7)))
        finally:
            imodel.resize(full)
    assert type(own) is type(model)
    assert small.shape == ref.shape and bool(torch.isfinite(small).all())
    assert _rel(small, discrete) <= 1e-5
    assert other.shape[0] == 1 and bool(torch.isfinite(other).all())


def _plan(imodel, tensor: str, dim: int) -> list:
    """(size, group) of each atom of one tensor dimension (a single segment)."""
    (segment,) = imodel.plans()[tensor][dim]
    return [(a.size, a.group) for a in segment]


def test_llama_groups_are_whole_kv_heads_and_mlp_widths() -> None:
    _, imodel = _converted("llama")
    sizes = imodel.sizes()
    assert sorted(sizes.values()) == [KV_HEADS] * LAYERS + [FFN] * LAYERS  # no hidden-size group
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        heads = imodel.groups[p + "self_attn.q_proj.weight:0"]
        assert heads.max_size == KV_HEADS
        assert sorted(heads.members) == sorted([(p + "self_attn.q_proj.weight", 0), (p + "self_attn.k_proj.weight", 0),
                                                (p + "self_attn.v_proj.weight", 0), (p + "self_attn.o_proj.weight", 1)])
        # queries are (key/value heads x (queries per kv head x head size), fixed): a removed kv
        # head takes its queries with it; the head size (rotary embedding) stays
        assert _plan(imodel, p + "self_attn.q_proj.weight", 0) == [(KV_HEADS, heads.name),
                                                                   (HEADS // KV_HEADS * HEAD, None)]
        assert _plan(imodel, p + "self_attn.k_proj.weight", 0) == [(KV_HEADS, heads.name), (HEAD, None)]
        mlp = imodel.groups[p + "mlp.gate_proj.weight:0"]
        assert mlp.max_size == FFN
        assert sorted(mlp.members) == sorted([(p + "mlp.gate_proj.weight", 0), (p + "mlp.up_proj.weight", 0),
                                              (p + "mlp.down_proj.weight", 1)])
    assert "model.embed_tokens.weight:1" in imodel.pinned  # the hidden size, kept by default


def test_llama_one_kv_head_is_a_smaller_llama() -> None:
    """The network with one of two key/value heads is a LlamaForCausalLM with 1 kv head and 2
    query heads (query heads 0, 1 belong to kv head 0): loaded with the sampled tensors, it
    computes the same logits as the integral model."""
    model, imodel = _converted("llama")
    full = imodel.sizes()
    kw = _inputs("llama")
    try:
        imodel.resize({g: 1 if s == KV_HEADS else 40 for g, s in full.items()})
        with torch.no_grad():
            got = imodel(**kw).logits
            tensors = imodel.tensors()
    finally:
        imodel.resize(full)
    small = tf.LlamaForCausalLM(tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=40, num_hidden_layers=LAYERS,
        num_attention_heads=2, num_key_value_heads=1, head_dim=HEAD, max_position_embeddings=64)).eval()
    missing, unexpected = small.load_state_dict({k: v for k, v in tensors.items()}, strict=False)
    assert not missing and unexpected == ["model.rotary_emb.inv_freq"]  # a non-persistent buffer
    with torch.no_grad():
        ref = small(**kw).logits
    assert _rel(ref, got) <= 1e-5
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (HIDDEN, HIDDEN)  # untouched


def test_gpt2_fused_qkv_gets_head_groups() -> None:
    _, imodel = _converted("gpt2")
    assert sorted(imodel.sizes().values()) == [HEADS] * LAYERS + [4 * HIDDEN] * LAYERS
    heads = imodel.groups["transformer.h.0.attn.c_attn.weight:1"]
    assert heads.max_size == HEADS
    # Conv1D keeps its weight as [in, out]: out is (q|k|v) x heads x head size
    assert _plan(imodel, "transformer.h.0.attn.c_attn.weight", 1) == [(3, None), (HEADS, heads.name), (HEAD, None)]
    assert _plan(imodel, "transformer.h.0.attn.c_proj.weight", 0) == [(HEADS, heads.name), (HEAD, None)]
    full = imodel.sizes()
    try:
        imodel.resize({heads.name: 2})
        small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert isinstance(small, tf.GPT2LMHeadModel)
    assert small.transformer.h[0].attn.split_size == 2 * HEAD and small.transformer.h[0].attn.c_attn.nf == 3 * 2 * HEAD
    assert small.get_parameter("transformer.h.0.attn.c_attn.weight").shape == (HIDDEN, 3 * 2 * HEAD)
    assert small.get_parameter("transformer.h.0.attn.c_proj.weight").shape == (2 * HEAD, HIDDEN)
    assert small.get_parameter("transformer.h.1.attn.c_attn.weight").shape == (HIDDEN, 3 * HIDDEN)


def test_phi3_fused_qkv_and_gate_up_get_head_and_mlp_groups() -> None:
    """Phi3 fuses q/k/v in ``qkv_proj`` and gate/up in ``gate_up_proj`` and slices them apart
    (with ``q[..., rotary_dim:]`` empty at full rotary): each kv head takes its query heads and its
    key and value rows; gate and up channels are one MLP group."""
    _, imodel = _converted("phi3")
    assert sorted(imodel.sizes().values()) == [KV_HEADS] * LAYERS + [FFN] * LAYERS
    heads = imodel.groups["model.layers.0.self_attn.qkv_proj.weight:0"]
    assert (heads.max_size, sorted(heads.members)) == (KV_HEADS, [("model.layers.0.self_attn.o_proj.weight", 1),
                                                                  ("model.layers.0.self_attn.qkv_proj.weight", 0)])
    q, kv = imodel.plans()["model.layers.0.self_attn.qkv_proj.weight"][0]
    assert [(a.size, a.group) for a in q] == [(KV_HEADS, heads.name), (HEADS // KV_HEADS * HEAD, None)]
    assert [(a.size, a.group) for a in kv] == [(2, None), (KV_HEADS, heads.name), (HEAD, None)]  # k | v
    assert _plan(imodel, "model.layers.0.mlp.gate_up_proj.weight", 0) == [
        (2, None), (FFN, "model.layers.0.mlp.gate_up_proj.weight:0")]


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_encoders_head_groups(name: str) -> None:
    _, imodel = _converted(name)
    assert sorted(imodel.sizes().values()) == [HEADS] * LAYERS + [FFN] * LAYERS


def test_hidden_size_when_asked() -> None:
    model, imodel = _converted("llama", hidden=True)
    sizes = imodel.sizes()
    assert sizes["model.embed_tokens.weight:1"] == HIDDEN
    assert sorted(sizes.values()) == [KV_HEADS] * LAYERS + [HIDDEN] + [FFN] * LAYERS
    kw = _inputs("llama")
    try:
        imodel.resize({"model.embed_tokens.weight:1": 16})
        with torch.no_grad():
            out = imodel(**kw).logits
    finally:
        imodel.resize(sizes)
    assert out.shape == (2, 10, VOCAB) and bool(torch.isfinite(out).all())


def test_keyword_inputs_forms() -> None:
    torch.manual_seed(0)
    model = _bert().eval()
    kw = _inputs("bert")
    config = inn.ConvertConfig(permute=False)
    by_kwargs = inn.convert(model, (), config, kwargs=kw)
    positional = inn.convert(model, (kw["input_ids"], kw["attention_mask"]), config)
    with torch.no_grad():
        ref = model(**kw).last_hidden_state
        assert _rel(ref, by_kwargs(**kw).last_hidden_state) <= 1e-5
        swapped = by_kwargs(attention_mask=kw["attention_mask"], input_ids=kw["input_ids"])
        assert _rel(ref, swapped.last_hidden_state) <= 1e-5  # keywords in any order
        assert _rel(ref, positional(kw["input_ids"], kw["attention_mask"]).last_hidden_state) <= 1e-5
    with pytest.raises(TypeError, match="either as example_inputs"):
        inn.convert(model, kw, config, kwargs=kw)
    with pytest.raises(TypeError, match="kwargs must be a dict"):
        inn.convert(model, (), config, kwargs=[1])


def test_an_explicit_cache_request_says_what_to_do() -> None:
    torch.manual_seed(0)
    model = _causal("llama").eval()
    with pytest.raises(RuntimeError, match=r"DynamicCache.*\n.*a key/value cache: convert with use_cache=False"):
        inn.convert(model, {**_inputs("llama"), "use_cache": True}, inn.ConvertConfig(permute=False))


def test_llama_integral_model_saves_and_loads(tmp_path) -> None:
    """The .inn file of a converted Llama (its causal mask uses ``aten.__and__``) loads back
    with the same groups and outputs."""
    _, imodel = _converted("llama")
    inn.save(imodel, str(tmp_path / "llama.inn"))
    loaded = inn.load(str(tmp_path / "llama.inn"))
    kw = _inputs("llama")
    assert loaded.sizes() == imodel.sizes()
    with torch.no_grad():
        assert torch.equal(loaded(**kw).logits, imodel(**kw).logits)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_causal_lm_back_generates(name: str) -> None:
    """At half the heads and MLP widths the returned model is the user's class and generates
    with its own key/value cache; its first token is the integral model's greedy choice."""
    _, imodel = _converted(name)
    kw = _inputs(name)
    kw["attention_mask"] = torch.ones_like(kw["attention_mask"])  # generate() positions padding its own way
    full = imodel.sizes()
    try:
        imodel.resize(0.5)
        own = imodel.to_discrete()
        with torch.no_grad():
            greedy = imodel(**kw).logits[:, -1].argmax(-1)
    finally:
        imodel.resize(full)
    out = own.generate(**kw, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 13)
    assert torch.equal(out[:, 10], greedy)


def test_llama_back_round_trips_through_save_pretrained(tmp_path) -> None:
    """Uniform sizes: the config of the returned LlamaForCausalLM says them, so save_pretrained /
    from_pretrained give the same logits. Per-layer sizes: no config can say them; the config is
    left as it was and the model round-trips through torch.save / torch.load."""
    _, imodel = _converted("llama")
    kw = _inputs("llama")
    full = imodel.sizes()
    heads = [g for g, s in full.items() if s == KV_HEADS]
    try:
        imodel.resize({g: 1 if g in heads else 40 for g in full})
        uniform = imodel.to_discrete()
        imodel.resize({heads[0]: 1, heads[1]: KV_HEADS})  # layer 0: 1 kv head, layer 1: 2
        with pytest.warns(UserWarning, match=r"the sizes differ between layers .*save_pretrained and push_to_hub "
                                             r"raise ConfigMismatchError"):
            per_layer = imodel.to_discrete()
    finally:
        imodel.resize(full)
    cfg = uniform.config
    assert (cfg.num_key_value_heads, cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size) == (1, 2, HEAD, 40)
    uniform.save_pretrained(tmp_path / "uniform")
    back = tf.LlamaForCausalLM.from_pretrained(tmp_path / "uniform").eval()
    with torch.no_grad():
        assert torch.equal(back(**kw).logits, uniform(**kw).logits)
    assert per_layer.config.num_key_value_heads == KV_HEADS  # left as it was
    assert per_layer.model.layers[0].self_attn.k_proj.out_features == HEAD
    with pytest.raises(ConfigMismatchError, match="refusing to save_pretrained: LlamaForCausalLM"):
        per_layer.save_pretrained(tmp_path / "per_layer")
    assert not (tmp_path / "per_layer").exists()
    torch.save(per_layer, tmp_path / "per_layer.pt")
    again = torch.load(tmp_path / "per_layer.pt", weights_only=False)
    with torch.no_grad():
        assert torch.equal(again(**kw).logits, per_layer(**kw).logits)
    with pytest.raises(ConfigMismatchError):  # the refusal survives torch.save
        again.save_pretrained(tmp_path / "again")


@pytest.mark.parametrize("name", ["qwen2", "mistral", "phi3", "gpt2", "bert", "vit"])
def test_uniform_sizes_round_trip_through_save_pretrained(name: str, tmp_path) -> None:
    """Every family survives save_pretrained / from_pretrained with identical outputs at uniform
    sizes its config can say: fewer kv heads and MLP channels for the GQA models (their config
    states head_dim); fewer MLP channels for GPT-2, BERT and ViT, whose configs derive the head
    size from hidden / heads, so fewer heads there go through torch.save (as per-layer sizes do)."""
    model, imodel = _converted(name)
    kw = _inputs(name)
    full = imodel.sizes()
    gqa = name in ("qwen2", "mistral", "phi3")
    try:
        imodel.resize({g: (1 if s == KV_HEADS else FFN // 2) if gqa else (s if s == HEADS else FFN // 2)
                       for g, s in full.items()})
        small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert type(small) is type(model)
    small.save_pretrained(tmp_path / name)
    back = type(model).from_pretrained(tmp_path / name).eval()
    with torch.no_grad():
        a, b = _main(back(**kw)), _main(small(**kw))
    assert torch.equal(a, b)
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_fewer_heads_than_the_config_can_say_refuse_save_pretrained(name: str, tmp_path) -> None:
    """Issue 20: GPT-2 / BERT with fewer heads at the same hidden size. Their configs
    derive the head size as hidden / heads, so no config describes 2 heads of 8 channels in a
    hidden size of 32: to_discrete() says so, and save_pretrained refuses instead of writing a
    config from_pretrained fails on. torch.save keeps the model; the config is left as it was."""
    model, imodel = _converted(name)
    kw = _inputs(name)
    full = imodel.sizes()
    field = "n_head" if name == "gpt2" else "num_attention_heads"
    try:
        imodel.resize({g: HEADS // 2 if s == HEADS else s for g, s in full.items()})
        with pytest.warns(UserWarning, match=rf"to_discrete\(\): {type(model).__name__} at these sizes cannot be "
                                             rf"described by its {type(model.config).__name__}: its config has no head "
                                             rf"size field: the head size is derived as .* / {field} \(32 / 4\), so 2 "
                                             rf"heads of 8 channels .*model\.config still says {field}=4"):
            small = imodel.to_discrete()
        with torch.no_grad():
            want = _main(imodel(**kw))
    finally:
        imodel.resize(full)
    assert type(small) is type(model) and getattr(small.config, field) == HEADS
    with pytest.raises(ConfigMismatchError, match=rf"refusing to save_pretrained: .*{field}=4 \(the full sizes\), so "
                                                  r"a config saved by save_pretrained would not load"):
        small.save_pretrained(tmp_path / name)
    assert not (tmp_path / name).exists()
    torch.save(small, tmp_path / "small.pt")
    again = torch.load(tmp_path / "small.pt", weights_only=False)
    with torch.no_grad():
        got = _main(again(**kw))
    assert _rel(want, got) <= 1e-5


def test_full_size_and_expressible_sizes_do_not_warn(tmp_path) -> None:
    """No warning and a working save_pretrained where the config can say the sizes (GPT-2's MLP
    width, at every head): the refusal is only for what no config describes."""
    _, imodel = _converted("gpt2")
    full = imodel.sizes()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            same = imodel.to_discrete()
            imodel.resize({g: s if s == HEADS else FFN // 2 for g, s in full.items()})
            mlp = imodel.to_discrete()
    finally:
        imodel.resize(full)
    same.save_pretrained(tmp_path / "same")
    mlp.save_pretrained(tmp_path / "mlp")
    assert tf.GPT2LMHeadModel.from_pretrained(tmp_path / "mlp").config.n_inner == FFN // 2


@pytest.mark.parametrize("name", ["vit", "llama"])
def test_fewer_heads_round_trip_where_the_config_has_a_head_size(name: str, tmp_path) -> None:
    """ViT's and Llama's configs state head_dim: uniformly fewer heads are written into the config
    (num_attention_heads, and num_key_value_heads for Llama), and save_pretrained /
    from_pretrained give identical outputs."""
    model, imodel = _converted(name)
    kw = _inputs(name)
    full = imodel.sizes()
    heads = KV_HEADS if name == "llama" else HEADS
    try:
        imodel.resize({g: s // 2 if s == heads else s for g, s in full.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert small.config.num_attention_heads == HEADS // 2 and small.config.head_dim == HEAD
    small.save_pretrained(tmp_path / name)
    back = type(model).from_pretrained(tmp_path / name).eval()
    with torch.no_grad():
        assert torch.equal(_main(back(**kw)), _main(small(**kw)))


def test_falcon_multi_query_keeps_its_head_size_and_round_trips(tmp_path) -> None:
    """Falcon's multi-query attention views its fused q/k/v as (heads + 2) x head size and picks
    the key and value heads by index, so the head count is fixed; the head size must stay fixed
    too (it was a channel group shared with the rotary ``inv_freq`` buffer of every layer, which
    pruned rotary frequencies, fell back to a graph module and, permuted, did not survive
    save_pretrained: ``inv_freq`` is not saved). Only the MLP widths are groups; half of them is
    said by ``ffn_hidden_size`` and round-trips through save_pretrained."""
    torch.manual_seed(0)
    cfg = tf.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
                          multi_query=True, new_decoder_architecture=False)
    model = tf.FalconForCausalLM(cfg).eval()
    kw = _inputs("falcon")
    imodel = inn.convert(model, kw, inn.ConvertConfig(tsp_time_limit=0.05))
    full = imodel.sizes()
    assert sorted(full.values()) == [4 * HIDDEN] * LAYERS
    assert all(".mlp.dense_h_to_4h." in g for g in full)
    try:
        imodel.resize({g: 2 * HIDDEN for g in full})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            want = imodel(**kw).logits
            small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert type(small) is tf.FalconForCausalLM and small.config.ffn_hidden_size == 2 * HIDDEN
    small.save_pretrained(tmp_path / "falcon")
    back = tf.FalconForCausalLM.from_pretrained(tmp_path / "falcon").eval()
    with torch.no_grad():
        got = small(**kw).logits
        assert torch.equal(back(**kw).logits, got)
    assert _rel(want, got) <= 1e-5


def test_gptj_sin_cos_table_looked_up_by_position_converts(tmp_path) -> None:
    """GPT-J looks its rotary sin/cos up as ``embed_positions[position_ids]`` (``aten.index`` with
    one integer index): the table's rows stay whole and its columns follow the heads' rotary
    channels. It converts exactly, each head (q, k, v rows, out_proj columns) is one group, and
    per-layer head counts round-trip through torchinn.io.save_pretrained / load_pretrained."""
    torch.manual_seed(0)
    cfg = tf.GPTJConfig(vocab_size=VOCAB, n_embd=HIDDEN, n_head=HEADS, rotary_dim=4, n_layer=LAYERS, n_positions=64,
                        bos_token_id=0, eos_token_id=0)
    model = tf.GPTJForCausalLM(cfg).eval()
    kw = _inputs("gptj")
    imodel = inn.convert(model, kw, inn.ConvertConfig(permute=False))
    with torch.no_grad():
        assert _rel(model(**kw).logits, imodel(**kw).logits) <= 1e-5
    full = imodel.sizes()
    assert sorted(full.values()) == [HEADS] * LAYERS + [4 * HIDDEN] * LAYERS
    heads = imodel.groups["transformer.h.0.attn.k_proj.weight:0"]
    p = "transformer.h.0.attn."
    assert sorted(heads.members) == [(p + "k_proj.weight", 0), (p + "out_proj.weight", 1), (p + "q_proj.weight", 0),
                                     (p + "v_proj.weight", 0)]
    assert _plan(imodel, p + "q_proj.weight", 0) == [(HEADS, heads.name), (HEAD, None)]
    try:
        imodel.resize({heads.name: 1})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # n_head cannot say it: see the refusal tests
            want = imodel(**kw).logits
            small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert type(small) is tf.GPTJForCausalLM and small.transformer.h[0].attn.q_proj.out_features == HEAD
    inn.io.save_pretrained(small, tmp_path / "gptj")
    back = inn.io.load_pretrained(tmp_path / "gptj")
    with torch.no_grad():
        got = small(**kw).logits
        assert torch.equal(back(**kw).logits, got)
    assert _rel(want, got) <= 1e-5


def test_falcon_grouped_query_heads_follow_their_key_value_heads(tmp_path) -> None:
    """Falcon's new decoder architecture (Falcon-7B/40B) views its fused q/k/v as (kv heads x
    (queries per kv head + 2) x head size) and reshapes the attention output with ``num_heads``:
    with one of two kv heads, ``num_kv_heads`` follows the tensors and ``num_heads`` the kv heads
    times ``num_key_value_groups`` (it fell back to a graph module, failing in sdpa); the model
    round-trips through torchinn.io.save_pretrained / load_pretrained."""
    torch.manual_seed(0)
    cfg = tf.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, num_kv_heads=KV_HEADS,
                          num_hidden_layers=LAYERS, new_decoder_architecture=True)
    model = tf.FalconForCausalLM(cfg).eval()
    kw = _inputs("falcon")
    imodel = inn.convert(model, kw, inn.ConvertConfig(permute=False))
    full = imodel.sizes()
    heads = "transformer.h.0.self_attention.query_key_value.weight:0"
    assert full[heads] == KV_HEADS and _plan(imodel, "transformer.h.0.self_attention.query_key_value.weight", 0) == [
        (KV_HEADS, heads), ((HEADS // KV_HEADS + 2) * HEAD, None)]
    try:
        imodel.resize({heads: 1})
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the config derives the head size: see the refusal tests
            want = imodel(**kw).logits
            small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert type(small) is tf.FalconForCausalLM
    attn = small.transformer.h[0].self_attention
    assert (attn.num_kv_heads, attn.num_heads, attn.num_key_value_groups) == (1, 2, 2)
    assert small.transformer.h[1].self_attention.num_heads == HEADS
    inn.io.save_pretrained(small, tmp_path / "falcon")
    back = inn.io.load_pretrained(tmp_path / "falcon")
    with torch.no_grad():
        got = small(**kw).logits
        assert torch.equal(back(**kw).logits, got)
    assert _rel(want, got) <= 1e-5


def test_falcon_fewer_heads_say_the_head_size_is_derived() -> None:
    """FalconConfig's head_dim is a property (hidden_size // num_attention_heads): fewer heads at
    the same hidden size are refused with the reason, not a bare 'no setting ... (tried ...)'."""
    torch.manual_seed(0)
    cfg = tf.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
                          multi_query=False, new_decoder_architecture=False)
    model = tf.FalconForCausalLM(cfg).eval()
    imodel = inn.convert(model, _inputs("falcon"), inn.ConvertConfig(permute=False))
    full = imodel.sizes()
    try:
        imodel.resize({g: HEADS // 2 if s == HEADS else s for g, s in full.items()})
        with pytest.warns(UserWarning, match=r"FalconForCausalLM at these sizes cannot be described by its FalconConfig: "
                                             r"its config has no head size field \(head_dim is a property\): the head "
                                             r"size is derived as hidden_size / num_attention_heads \(32 / 4\), so 2 "
                                             r"heads of 8 channels"):
            small = imodel.to_discrete()
    finally:
        imodel.resize(full)
    assert type(small) is tf.FalconForCausalLM and small.transformer.h[0].self_attention.num_heads == HEADS // 2
    mlp = sorted(g for g, s in full.items() if s != HEADS)
    try:
        imodel.resize({mlp[0]: 40})  # per-layer MLP widths: the message names the MLP field, not the heads
        with pytest.warns(UserWarning, match=r"the sizes differ between layers \(channels of full size 128 now "
                                             r"\[40, 128\]\), .* model\.config still says ffn_hidden_size=128 \(the "
                                             r"full sizes\)"):
            imodel.to_discrete()
    finally:
        imodel.resize(full)
