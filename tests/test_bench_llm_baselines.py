"""benchmarks/llm_baselines.py: the LLM structured-pruning baselines on a tiny random Llama (GQA)."""

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from benchmarks import llm_baselines as lb  # noqa: E402

VOCAB = 100


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    for p in model.parameters():      # the default init is too small to make the layers matter
        nn.init.normal_(p, std=0.2) if p.dim() == 2 else None
    return model


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, VOCAB, (2, 16), generator=g),) for _ in range(2)]


X = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(2))


def test_non_embedding_params_counts_the_layers_and_final_norm(tiny):
    # per layer: q 64x64, k/v 64x32, o 64x64, gate/up 64x96, down 96x64, two norms of 64; final norm 64
    assert lb.non_embedding_params(tiny) == 3 * (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 96 + 2 * 64) + 64 == 92608


@pytest.mark.parametrize("method", sorted(lb.METHODS))
@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
def test_methods_return_a_smaller_working_llama(tiny, calib, method, fraction):
    before = copy.deepcopy(tiny.state_dict())
    ref = tiny(X).logits
    original = lb.non_embedding_params(tiny)
    removed = int(fraction * original)
    out = lb.METHODS[method](tiny, calib, removed)
    assert type(out) is transformers.LlamaForCausalLM
    count = lb.non_embedding_params(out)
    assert original - removed - 0.005 * (original - removed) <= count <= original - removed
    logits = out(X).logits
    assert logits.shape == (2, 10, VOCAB) and torch.isfinite(logits).all()
    assert (logits - ref).abs().max() > 1e-3          # something was pruned
    gen = out.generate(X[:1], attention_mask=torch.ones_like(X[:1]), max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 15)
    # the KV cache gives the same next token as a full forward
    assert torch.equal(gen[0, 10], out(X[:1]).logits[0, -1].argmax())
    after = tiny.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("method", sorted(lb.METHODS))
def test_nothing_removed_gives_the_same_logits(tiny, calib, method):
    out = lb.METHODS[method](tiny, calib, 0)
    assert lb.non_embedding_params(out) == lb.non_embedding_params(tiny)
    torch.testing.assert_close(out(X).logits, tiny(X).logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", sorted(lb.METHODS))
def test_removed_out_of_range_is_refused(tiny, calib, method):
    for bad in (-1, 10 ** 9):
        with pytest.raises(ValueError, match=rf"^{method}: removed must be an integer in \[0, \d+\] .*got {bad}$"):
            lb.METHODS[method](tiny, calib, bad)


@pytest.mark.parametrize("method", sorted(lb.METHODS))
def test_the_largest_allowed_removal_works(tiny, calib, method):
    with pytest.raises(ValueError) as err:
        lb.METHODS[method](tiny, calib, -1)
    maximum = int(str(err.value).split("[0, ")[1].split("]")[0])
    out = lb.METHODS[method](tiny, calib, maximum)
    assert torch.isfinite(out(X).logits).all()
    with pytest.raises(ValueError, match=rf"\[0, {maximum}\]"):
        lb.METHODS[method](tiny, calib, maximum + 1)


def test_calibration_dicts_with_padding_leave_padded_tokens_out(tiny, calib):
    ids = calib[0][0]
    junk = ids.clone()
    junk[:, 12:] = 7
    mask = torch.ones_like(ids)
    mask[:, 12:] = 0
    trimmed = lb.collect(tiny, [(ids[:, :12],)])
    padded = lb.collect(tiny, [{"input_ids": junk, "attention_mask": mask}])
    assert trimmed[0][0].n == padded[0][0].n == 24
    torch.testing.assert_close(padded[0][1].mean(), trimmed[0][1].mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(padded[2], trimmed[2], rtol=1e-5, atol=1e-6)


def test_flap_compensation_is_exact_for_constant_inputs():
    torch.manual_seed(3)
    lin = nn.Linear(6, 4, bias=False)
    x = torch.randn(5, 6)
    x[:, [1, 4]] = torch.tensor([0.7, -1.3])        # the removed channels carry a constant
    keep = torch.tensor([0, 2, 3, 5])
    mean = x.mean(0)
    out = lb.compensate(lin, keep, mean)
    torch.testing.assert_close(out(x[:, keep]), lin(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(lb.compensate(lin, keep, None)(x[:, keep]), lin(x), atol=1e-2)


def test_flap_compensation_inside_the_model_is_exact_when_the_channels_are_constant(tiny, calib):
    # MLP channels 0..9 of layer 1 made constant: gate rows zero (silu(0) = 0 would kill them, so
    # give gate a bias), up rows zero with a bias -> the down_proj input of those channels is a constant
    model = copy.deepcopy(tiny)
    mlp = model.model.layers[1].mlp
    gate, up = nn.Linear(64, 96, bias=True), nn.Linear(64, 96, bias=True)
    with torch.no_grad():
        gate.weight.copy_(mlp.gate_proj.weight), up.weight.copy_(mlp.up_proj.weight)
        gate.bias.zero_(), up.bias.zero_()
        gate.weight[:10] = 0
        up.weight[:10] = 0
        gate.bias[:10], up.bias[:10] = 2.0, 0.5
    mlp.gate_proj, mlp.up_proj = gate, up
    attn, m, _ = lb.collect(model, calib)
    keep = torch.arange(10, 96)
    ref = model(X).logits
    lb.prune_layer(model.model.layers[1], torch.arange(2), keep, None, m[1].mean())
    assert mlp.down_proj.in_features == 86 and mlp.down_proj.bias is not None
    torch.testing.assert_close(model(X).logits, ref, rtol=1e-4, atol=1e-4)


def test_flap_adapts_sizes_across_layers_and_adds_biases(tiny, calib):
    out = lb.prune_flap(tiny, calib, int(0.3 * lb.non_embedding_params(tiny)))
    widths = [l.mlp.down_proj.in_features for l in out.model.layers]
    assert len(set(widths)) > 1
    assert all(l.mlp.down_proj.bias is not None for l, w in zip(out.model.layers, widths) if w < 96)


def test_uniform_split_rule():
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2)
    layers = list(transformers.LlamaForCausalLM(cfg).model.layers)
    cg, cc = lb.group_cost(layers[0]), lb.channel_cost(layers[0])
    assert (cg, cc) == (64 * 16 * 6 * 2 // 2, 3 * 64) == (6144, 192)
    # 30% of the 3 x 30720 prunable: round(0.3 * 2) = 1 group per layer, the rest in channels
    h, ch = lb.uniform_split(layers, 27648)
    assert h == 1 and ch == [16, 16, 16] and 3 * cg + 48 * cc == 27648
    h, ch = lb.uniform_split(layers, 1000)
    assert h == 0 and ch == [2, 2, 2] and sum(ch) == -(-1000 // cc)


def test_llm_pruner_keeps_the_first_and_last_layers():
    assert lb.llm_pruner_layers(32) == range(4, 30)
    assert lb.llm_pruner_layers(30) == range(4, 28)
    assert lb.llm_pruner_layers(3) == range(0, 3)


def test_shortgpt_deletes_the_lowest_influence_layer(tiny, calib):
    _, _, bi = lb.collect(tiny, calib)
    layer_params = sum(p.numel() for p in tiny.model.layers[0].parameters())
    out = lb.prune_shortgpt(tiny, calib, layer_params)
    assert out.shortgpt_removed_layers == [int(bi.argmin())]
    assert out.config.num_hidden_layers == 2 and [l.self_attn.layer_idx for l in out.model.layers] == [0, 1]
    assert all(l.mlp.down_proj.in_features == 96 for l in out.model.layers)


def test_slicegpt_full_width_rotation_keeps_the_logits_and_slicing_shrinks_the_hidden_size(tiny, calib):
    ref = tiny(X).logits
    full = lb.slice_hidden(copy.deepcopy(tiny), calib, 64)
    assert full.lm_head.weight is not full.model.embed_tokens.weight
    torch.testing.assert_close(full(X).logits, ref, rtol=1e-4, atol=1e-4)
    out = lb.prune_slicegpt(tiny, calib, int(0.3 * lb.non_embedding_params(tiny)))
    width = out.config.hidden_size
    assert width < 64 and out.model.embed_tokens.weight.shape == (VOCAB, width)
    assert out.model.layers[0].self_attn.q_proj.weight.shape == (64, width) and not out.config.tie_word_embeddings


def test_compress_llm_table_bolds_the_best_of_each_column_and_names_failures():
    from benchmarks.compress_llm import format_table

    def row(method, ppl, **kw):
        return {"method": method, "level": 0.2, "non_embedding": 84_960_000, "seconds": 10.0, "rss_gb": 2.0,
                "ppl": {"topics": ppl[0], "docstrings": ppl[1]}, **kw}
    rows = [row("compress", (24.75, 21.41), report={"steps": 0}),
            row("compress-tuned", (27.0, 20.0), report={"steps": 3}),
            row("flap", (26.40, 21.76), ft_ppl={"topics": 26.30, "docstrings": 21.57}, ft_seconds=60.0, ft_steps=7,
                ft_rss_gb=3.0),
            {"method": "slicegpt", "level": 0.2, "error": "boom"}]
    lines = format_table(rows, 60).splitlines()
    assert lines[2] == ("| 20% | compress | 84.96 M | **24.75** / **21.41** | 10 | 2.00 | 27.00 / **20.00** | 10 | 3 "
                        "| 2.00 |")
    assert lines[3] == "| 20% | flap | 84.96 M | 26.40 / 21.76 | 10 | 2.00 | **26.30** / 21.57 | 70 | 7 | 3.00 |"
    assert lines[4].startswith("| 20% | slicegpt | failed")
