"""The export-friendly ALBERT matches transformers' AlbertForSequenceClassification in eager fp32."""
from __future__ import annotations

import random

import pytest
import torch

from pipeline.model.checkpoint import load_checkpoint
from pipeline.core.tokenization import encode

TEXTS = ["I love this tea, great taste!", "bad", "", "the worst coffee ever bought " * 30, "Sweet & fresh cookies."]


def random_configs(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    configs = []
    for index in range(count):
        heads = rng.choice([2, 4])
        layers = rng.choice([2, 4, 6])
        groups = rng.choice([g for g in (1, 2, 3) if layers % g == 0])
        configs.append(dict(
            embedding_size=rng.choice([8, 16, 24]),
            hidden_size=heads * rng.choice([8, 12]),
            num_attention_heads=heads,
            num_hidden_layers=layers,
            num_hidden_groups=groups,
            inner_group_num=rng.choice([1, 2]),
            intermediate_size=rng.choice([32, 48]),
            num_labels=rng.choice([2, 3]),
            hidden_act=rng.choice(["gelu", "gelu_new", "relu"]),
            seed=index,
        ))
    # one shared group and two, four layers each: sharing by group
    configs.append(dict(embedding_size=16, hidden_size=32, num_hidden_groups=1, num_hidden_layers=4, seed=91))
    configs.append(dict(embedding_size=16, hidden_size=32, num_hidden_groups=2, num_hidden_layers=4, seed=92))
    configs.append(dict(embedding_size=32, hidden_size=32, num_hidden_groups=1, num_hidden_layers=2, seed=93))
    # groups need not divide the layers (calls 0-1 share one layer, call 2 another): HF's group_for_layer
    configs.append(dict(embedding_size=16, hidden_size=32, num_hidden_groups=2, num_hidden_layers=3, seed=94))
    return configs


@pytest.mark.parametrize("overrides", random_configs(8), ids=lambda c: "-".join(f"{k[:6]}{v}" for k, v in c.items()))
def test_export_model_matches_hf(make_albert, overrides):
    model = load_checkpoint(make_albert(**overrides), max_length=64)
    assert model.export_model.spec.embedding_size == overrides["embedding_size"]
    encoded = encode(model.tokenizer, TEXTS, 64)
    assert encoded.attention_mask.sum(1).min() < 64, "padded rows must be part of the test"
    ids, mask, types = (torch.from_numpy(a) for a in (encoded.input_ids, encoded.attention_mask, encoded.token_type_ids))
    with torch.no_grad():
        reference = model.reference(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        with_types = model.export_model(ids, mask, types)
        without_types = model.export_model(ids, mask)
        hf_without = model.reference(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(reference, with_types, atol=1e-5, rtol=0), (reference - with_types).abs().max()
    assert torch.allclose(hf_without, without_types, atol=1e-5, rtol=0), (hf_without - without_types).abs().max()
    assert float(reference.std()) > 0, "degenerate model: all logits equal"


def test_shared_layers_counted_once(make_albert):
    shared = load_checkpoint(make_albert(num_hidden_layers=6, num_hidden_groups=1))
    unshared = load_checkpoint(make_albert(num_hidden_layers=6, num_hidden_groups=6))
    layer = sum(p.numel() for p in shared.export_model.albert.encoder.albert_layer_groups[0].parameters())
    assert unshared.num_parameters - shared.num_parameters == 5 * layer
    assert shared.num_parameters == sum(p.numel() for p in shared.reference.parameters())


def test_identical_group_weights_are_tied(make_albert, tmp_path):
    """Attention-only sharing is stored as identical copies; loading ties them so exports store them once."""
    from safetensors.torch import load_file, save_file

    path = make_albert(num_hidden_layers=2, num_hidden_groups=2)
    state = load_file(str(path / "model.safetensors"))
    for key in [k for k in state if "albert_layer_groups.0.albert_layers.0.attention." in k]:
        state[key.replace("groups.0.", "groups.1.")] = state[key].clone()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    model = load_checkpoint(path)
    groups = model.export_model.albert.encoder.albert_layer_groups
    assert groups[0].albert_layers[0].attention is groups[1].albert_layers[0].attention
    assert groups[0].albert_layers[0].ffn is not groups[1].albert_layers[0].ffn


def test_recurrent_unrolled_matches_gru():
    from pipeline.model.recurrent import GRUFrontEnd

    torch.manual_seed(0)
    front = GRUFrontEnd(8).eval()
    torch.nn.init.normal_(front.output.weight)
    x = torch.randn(2, 10, 8)
    with torch.no_grad():
        fused, _ = front.gru(x)
        assert torch.allclose(fused, front.unrolled(x), atol=1e-6)


@pytest.mark.parametrize("overrides", random_configs(4, seed=1), ids=lambda c: "-".join(f"{k[:6]}{v}" for k, v in c.items()))
def test_batch1_and_flat_forms_match_hf_at_every_length(make_albert, overrides):
    """The exported forms (batch 1 with -1 views and a one-hot [CLS] bmm; the 2-D ONNX form `classify_flat`) give
    the reference's logits for unpadded texts of any length, and for a padded one."""
    model = load_checkpoint(make_albert(**overrides), max_length=64)
    encoded = encode(model.tokenizer, TEXTS, 64)
    with torch.no_grad():
        for index in range(len(TEXTS)):
            length = int(encoded.attention_mask[index].sum())
            for width in (length, 64):  # unpadded, padded
                ids, mask, types = (torch.from_numpy(a[index : index + 1, :width].copy())
                                    for a in (encoded.input_ids, encoded.attention_mask, encoded.token_type_ids))
                reference = model.reference(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                for form in (model.export_model.classify, model.export_model.classify_flat):
                    got = form(ids, mask, types)
                    assert torch.allclose(reference, got, atol=1e-5, rtol=0), (form.__name__, width, (reference - got).abs().max())
