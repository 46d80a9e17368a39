"""compress and choose_sizes on the shipped Llama called as transformers users call it: keyword
example inputs, calibration batches that are dicts with right padding, attention masks and labels
(as a collator yields them); the result generates with its key/value cache, and at uniform sizes
round-trips through save_pretrained."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchinn as inn

tf = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama():
    from torchinn_demo import lm

    model, _ = lm.load()
    ids = lm.windows(lm.tokens(lm.texts()[0]), 32)[:12]
    batches = []
    for i in range(0, 12, 4):
        x, mask = ids[i:i + 4].clone(), torch.ones(4, 32, dtype=torch.long)
        x[1, 20:], mask[1, 20:] = 0, 0  # right padding, as a collator pads
        x[3, 9:], mask[3, 9:] = 0, 0
        batches.append(tf.BatchEncoding({"input_ids": x, "attention_mask": mask, "labels": x}))
    return model, batches


def test_compress_with_keyword_inputs_generates_with_its_cache(llama, tmp_path) -> None:
    model, batches = llama
    example = {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # per-layer sizes: save_pretrained refused, said at return
        small, report = inn.compress(model, example, 0.7, calibration=batches,
                                     tune=inn.TuneConfig(steps=4, seconds=None))  # steps, whatever the load
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert type(small) is type(model)
    assert report.params_after < 0.75 * report.params_before
    assert report.tuning["steps"] >= 1 and report.error_after_tuning < 0.5
    prompt = batches[0]["input_ids"][:2, :10]
    cached = small.generate(prompt, max_new_tokens=8, use_cache=True, do_sample=False)
    plain = small.generate(prompt, max_new_tokens=8, use_cache=False, do_sample=False)
    assert cached.shape == (2, 18)
    assert torch.equal(cached, plain)


def test_uniform_sizes_generate_after_save_pretrained(llama, tmp_path) -> None:
    model, batches = llama
    example = {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"]}
    imodel = inn.convert(model, example, inn.ConvertConfig(permute=False))
    sizes = {g: (s if s == 2 else 256) for g, s in imodel.sizes().items()}  # every MLP at 256 of 512
    small, _ = inn.compress(model, example, 0.9, calibration=batches, tune=False, sizes=sizes)
    assert small.config.intermediate_size == 256
    small.save_pretrained(tmp_path / "small")
    back = tf.LlamaForCausalLM.from_pretrained(tmp_path / "small").eval()
    prompt = batches[1]["input_ids"][:2, :10]
    out = back.generate(prompt, max_new_tokens=8, use_cache=True, do_sample=False)
    assert torch.equal(out, small.generate(prompt, max_new_tokens=8, use_cache=False, do_sample=False))
    with torch.no_grad():
        assert torch.equal(back(**example).logits, small(**example).logits)


def test_choose_sizes_on_dict_batches(llama) -> None:
    model, batches = llama
    example = {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"]}
    imodel = inn.convert(model, example, inn.ConvertConfig(permute=False))
    sizes = inn.choose_sizes(imodel, 0.7, calibration=batches, method="fisher")
    assert imodel.num_parameters(sizes) <= 0.7 * 1.02 * imodel.num_parameters()
    assert imodel.num_parameters(sizes) >= 0.6 * imodel.num_parameters()
    flops = inn.choose_sizes(imodel, 0.7, "flops", example_inputs=example, method="uniform")
    assert set(flops) == set(sizes)


def test_activation_scores_leave_out_padded_positions(llama) -> None:
    # right padding: the real tokens' activations are those of the unpadded rows (a causal model),
    # so a padded batch scores like its rows run one by one, whatever the padded positions hold
    from torchinn.compression.importance import measure_importance
    from torchinn.model.inputs import batch_inputs

    model, batches = llama
    imodel = inn.convert(model, {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"]},
                         inn.ConvertConfig(permute=False))
    batch = batches[0]
    lengths = batch["attention_mask"].sum(1).tolist()
    rows = [{"input_ids": batch["input_ids"][i:i + 1, :n], "attention_mask": batch["attention_mask"][i:i + 1, :n]}
            for i, n in enumerate(lengths)]
    junk = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7))
    padded = measure_importance(imodel, [batch_inputs(junk)], fisher=False).activation
    one_by_one = measure_importance(imodel, [batch_inputs(r) for r in rows], fisher=False).activation
    assert padded.keys() == one_by_one.keys() and len(padded) > 0
    for g in padded:
        torch.testing.assert_close(padded[g], one_by_one[g], rtol=1e-4, atol=1e-9)


def test_the_refit_leaves_out_padded_positions(llama) -> None:
    # whatever the padded positions of a batch hold, the reconstruction fits the same weights
    from torchinn.compression.baselines import reconstruct

    model, batches = llama
    example = {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"]}
    imodel = inn.convert(model, example, inn.ConvertConfig(permute=False))
    imodel.resize(0.5)

    def filled(token):
        return [dict(b, input_ids=b["input_ids"].masked_fill(b["attention_mask"] == 0, token)) for b in batches]

    one, other = (dict(reconstruct(imodel, None, filled(t), ridge=1e-3).named_parameters()) for t in (7, 3))
    assert one.keys() == other.keys()
    refit = [n for n in one if "mlp.down_proj" in n or "o_proj" in n]
    assert refit
    for n in one:
        torch.testing.assert_close(one[n], other[n], rtol=1e-5, atol=1e-6)
