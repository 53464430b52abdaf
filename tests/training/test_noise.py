"""rdrop.training.noise: each source against its literal definition; copies draw their own noise;
eval is bit-identical to the plain model; a model that cannot take a source fails naming its
modules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from rdrop.training.inspection import no_dropout_advice
from rdrop.training.noise import Noise, attach_noise, parse_noise

torch.set_num_threads(1)


class TinyLM(nn.Module):
    """Token ids -> logits with no dropout at all (a Llama-like config with every rate 0)."""

    def __init__(self, vocab: int = 13, dim: int = 8, attention_dropout: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.attn = nn.MultiheadAttention(dim, 2, dropout=attention_dropout, batch_first=True)
        self.drop = nn.Dropout(0.0)
        self.out = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out(self.drop(torch.tanh(h)))


# ------------------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("spec", "expected"), [
    (None, Noise("dropout", None)),
    ("dropout", Noise("dropout", None)),
    ("dropout:0.1", Noise("dropout", 0.1)),
    ("embedding", Noise("embedding", 5.0)),
    ("embedding:15", Noise("embedding", 15.0)),
    ("lora:0.05", Noise("lora", 0.05)),
    (Noise("embedding", 3, module="embed"), Noise("embedding", 3.0, module="embed")),
])
def test_parse_noise_reads_every_documented_form(spec, expected):
    assert parse_noise(spec) == expected


@pytest.mark.parametrize(("spec", "error", "match"), [
    ("gaussian", ValueError, "noise kind must be one of"),
    ("dropout:1.0", ValueError, r"0 < P < 1"),
    ("dropout:0", ValueError, r"0 < P < 1"),
    ("lora", ValueError, "needs a rate"),
    ("embedding:-1", ValueError, "finite alpha > 0"),
    ("embedding:inf", ValueError, "finite alpha > 0"),
    ("embedding:x", ValueError, "must be a number"),
    (0.1, TypeError, "noise must be a string"),
    (Noise("dropout", 0.1, module="x"), ValueError, "takes no module"),
])
def test_parse_noise_refuses_bad_options_with_the_fix(spec, error, match):
    with pytest.raises(error, match=match):
        parse_noise(spec)


# ---------------------------------------------------------------------------- embedding
def test_embedding_noise_is_neftunes_uniform_noise_at_alpha_over_sqrt_ld():
    """Literal: e + U(-a/sqrt(L d), a/sqrt(L d)), the same draws as a reseeded generator."""
    model = TinyLM()
    ids = torch.randint(0, 13, (3, 7))
    plain = model.embed(ids).detach().to(torch.float64)
    attach_noise(model, "embedding:5")
    model.train()
    torch.manual_seed(123)
    noisy = model.embed(ids).detach().to(torch.float64)
    torch.manual_seed(123)
    bound = 5.0 / math.sqrt(7 * 8)  # alpha / sqrt(L * d), float64
    draws = torch.empty(3, 7, 8).uniform_(-bound, bound).to(torch.float64)
    assert torch.allclose(noisy, plain + draws, atol=1e-6, rtol=0)
    assert float((noisy - plain).abs().max()) <= bound + 1e-6
    assert float((noisy - plain).abs().max()) > 0.9 * bound  # 168 draws reach near the bound


def test_embedding_noise_of_a_packed_copy_uses_one_copys_length():
    """A pack duplicated along its tokens (1, 2T, d) gets the plain pack's scale a/sqrt(T d)."""
    model = TinyLM()
    handle = attach_noise(model, "embedding:5")
    model.train()
    ids = torch.randint(0, 13, (1, 400))
    plain = model.embed.weight[ids].detach()
    with handle.forward_copies(2):
        noise = (model.embed(ids) - plain).detach()
    bound = 5.0 / math.sqrt(200 * 8)
    assert float(noise.abs().max()) <= bound + 1e-6
    assert float(noise.abs().max()) > 0.99 * bound  # would be at most bound / sqrt(2) with L=400
    # copies along the batch (rows): each row keeps its own length
    rows = torch.randint(0, 13, (2, 400))
    with handle.forward_copies(2):
        noise = (model.embed(rows) - model.embed.weight[rows]).detach()
    assert float(noise.abs().max()) <= 5.0 / math.sqrt(400 * 8) + 1e-6


def test_each_copy_of_a_concatenated_batch_draws_its_own_embedding_noise():
    model = TinyLM()
    attach_noise(model, "embedding:5")
    model.train()
    ids = torch.randint(0, 13, (4, 6))
    logits = model(torch.cat([ids, ids]))
    assert not torch.equal(logits[:4], logits[4:])


def test_embedding_noise_leaves_the_gradient_of_the_embedding_unchanged():
    """The noise is additive and constant: d(out)/d(weight) is the plain embedding's."""
    model, plain = TinyLM(), TinyLM()
    attach_noise(model, "embedding:5")
    ids = torch.randint(0, 13, (2, 5))
    weights = torch.randn(2, 5, 8, dtype=torch.float64)
    for m in (model, plain):
        m.train()
        (m.embed(ids).to(torch.float64) * weights).sum().backward()
    assert torch.equal(model.embed.weight.grad, plain.embed.weight.grad)


@pytest.mark.parametrize("spec", ["embedding:5", "dropout:0.3"])
def test_eval_is_bit_identical_to_the_plain_model_and_remove_restores_it(spec):
    model = TinyLM()
    plain = copy.deepcopy(model)
    handle = attach_noise(model, spec)
    ids = torch.randint(0, 13, (3, 6))
    model.eval()
    plain.eval()
    assert torch.equal(model(ids), plain(ids))
    model.train()
    assert not torch.equal(model(ids), model(ids))  # training forwards draw noise
    handle.remove()
    handle.remove()  # idempotent
    assert not model._forward_hooks and not model.embed._forward_hooks
    assert model.attn.dropout == 0.0 and model.drop.p == 0.0
    assert torch.equal(model(ids), plain.train()(ids))  # training is plain again


def test_embedding_noise_on_a_named_layer_and_the_errors_name_the_modules():
    two = nn.ModuleDict({"tok": nn.Embedding(5, 4), "pos": nn.Embedding(5, 4)})
    with pytest.raises(ValueError, match=r"several nn.Embedding layers \['tok', 'pos'\]"):
        attach_noise(two, "embedding:5")
    assert attach_noise(two, Noise("embedding", 5.0, module="tok")).targets == ("tok",)
    with pytest.raises(ValueError, match=r"not a submodule.*'tok' \(Embedding\)"):
        attach_noise(two, Noise("embedding", 5.0, module="word"))
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"no get_input_embeddings\(\) and no nn.Embedding; "
                       r"looked at the model's modules: '0' \(Linear\), '1' \(ReLU\), '2' "
                       r"\(Linear\)"):
        attach_noise(mlp, "embedding:5")


# ------------------------------------------------------------------------------ dropout:P
def test_dropout_noise_sets_every_slot_and_the_passes_differ():
    model = TinyLM()
    handle = attach_noise(model, "dropout:0.2")
    assert set(handle.targets) == {"attn.dropout", "drop"}
    assert model.attn.dropout == 0.2 and model.drop.p == 0.2
    model.train()
    ids = torch.randint(0, 13, (4, 6))
    logits = model(torch.cat([ids, ids]))
    assert not torch.equal(logits[:4], logits[4:])


def test_dropout_noise_on_a_model_without_slots_names_its_modules():
    with pytest.raises(ValueError, match=r"no dropout slot.*'0' \(Linear\), '1' \(Tanh\)"):
        attach_noise(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), "dropout:0.1")


# ---------------------------------------------------------------------------------- lora:P
class LoraLinear(nn.Module):
    """Shaped like peft.tuners.lora.Linear: ``lora_dropout`` a ModuleDict (Identity when 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Linear(4, 4)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(4, 2, bias=False)})
        self.lora_B = nn.ModuleDict({"default": nn.Linear(2, 4, bias=False)})
        self.lora_dropout = nn.ModuleDict({"default": nn.Identity()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, d = self.lora_A["default"], self.lora_B["default"], self.lora_dropout["default"]
        return self.base(x) + b(a(d(x)))


def test_lora_noise_replaces_the_identity_and_follows_the_layer_mode():
    model = nn.Sequential(LoraLinear(), nn.Linear(4, 2))
    plain = copy.deepcopy(model)
    model.eval()
    handle = attach_noise(model, "lora:0.5")
    assert handle.targets == ("0.lora_dropout.default",)
    slot = model[0].lora_dropout["default"]
    assert isinstance(slot, nn.Dropout) and slot.p == 0.5 and not slot.training
    x = torch.randn(8, 4)
    assert torch.equal(model(x), plain.eval()(x))  # attached in eval: still the plain model
    model.train()
    assert not torch.equal(model(x), model(x))
    handle.remove()
    assert isinstance(model[0].lora_dropout["default"], nn.Identity)


def test_lora_noise_without_lora_layers_names_the_modules():
    with pytest.raises(ValueError, match=r"no LoRA layer.*'0' \(Linear\).*get_peft_model"):
        attach_noise(nn.Sequential(nn.Linear(2, 2)), "lora:0.1")


# ------------------------------------------------------------------------------- warning
def test_the_no_dropout_advice_names_the_noise_options_this_model_can_take():
    advice = no_dropout_advice(TinyLM())
    for option in ("noise=", "'embedding:5'", "'dropout:0.1'", "'lora:0.1'"):
        assert option in advice
    assert "the input embedding 'embed'" in advice and "2 dropout slot(s)" in advice
    bare = no_dropout_advice(nn.Linear(2, 2))
    assert "'embedding:5'" in bare and "this model has none of these" in bare


# ----------------------------------------------------------------------------- RDrop(noise=)
def test_rdrop_with_embedding_noise_is_the_literal_loss_of_two_noisy_passes():
    """The loss equals the float64 reference on passes rebuilt by hand: the embeddings of
    [x; x] plus the same uniform draws (reseeded generator), then the rest of the model."""
    from rdrop import RDrop

    from reference import reference_rdrop_loss

    model = TinyLM()
    wrapped = RDrop(model, alpha=1.5, noise="embedding:5")
    ids, y = torch.randint(0, 13, (4, 6)), torch.randint(0, 13, (4, 6))
    wrapped.train()
    wrapped(ids, target=y)  # the first call also runs the once-only eval-mode input check
    torch.manual_seed(7)
    out = wrapped(ids, target=y)
    torch.manual_seed(7)
    bound = 5.0 / math.sqrt(6 * 8)
    with torch.no_grad():
        h = model.embed.weight[torch.cat([ids, ids])] + torch.empty(8, 6, 8).uniform_(-bound,
                                                                                    bound)
        h = h + model.attn(h, h, h, need_weights=False)[0]
        passes = model.out(torch.tanh(h)).double().split(4)
    assert not torch.equal(passes[0], passes[1])
    ref = reference_rdrop_loss(list(passes), y, alpha=1.5)
    for key in ("loss", "task_loss", "consistency_loss"):
        assert abs(float(getattr(out, key).detach()) - float(ref[key])) < 1e-5


@pytest.mark.parametrize("noise", ["embedding:5", "dropout:0.2"])
def test_rdrop_with_noise_evaluates_and_predicts_as_the_plain_model(noise):
    from rdrop import RDrop

    model = TinyLM()
    plain = copy.deepcopy(model).eval()
    wrapped = RDrop(model, noise=noise).eval()
    ids, y = torch.randint(0, 13, (3, 6)), torch.randint(0, 13, (3, 6))
    assert torch.equal(wrapped(ids), plain(ids))
    out = wrapped(ids, target=y)  # eval with a target: one plain pass
    assert torch.equal(out.logits, plain(ids)) and float(out.consistency_loss) == 0.0
    assert "noise='" in repr(wrapped)


def test_rdrop_warns_about_a_model_without_randomness_naming_the_noise_options():
    import warnings

    from rdrop import RDrop

    with pytest.warns(UserWarning, match=r"no dropout layer with p > 0.*noise=: 'embedding:5'"):
        RDrop(TinyLM())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RDrop(TinyLM(), noise="embedding:5")  # randomness given: no warning
        RDrop(TinyLM(), noise="dropout:0.1")


def test_rdrop_refuses_a_noise_the_model_cannot_take_at_construction():
    from rdrop import RDrop

    with pytest.raises(ValueError, match=r"no get_input_embeddings\(\) and no nn.Embedding; "
                                         r"looked at the model's modules: '0' \(Linear\)"):
        RDrop(nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.1)), noise="embedding:5")
    with pytest.raises(ValueError, match=r"no LoRA layer.*'0' \(Linear\)"):
        RDrop(nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.1)), noise="lora:0.1")


def test_rdrop_with_a_multilabel_head_is_the_bernoulli_loss_of_its_passes():
    from rdrop import RDrop, multilabel_rdrop_loss

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 4))
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(o))
    wrapped = RDrop(net, alpha=0.7, consistency="bernoulli", check_inputs=False).train()
    x, y = torch.randn(5, 6), (torch.rand(5, 4) < 0.4).float()
    out = wrapped(x, target=y)
    first, second = seen[-1].split(5)
    assert torch.allclose(out.loss, multilabel_rdrop_loss(first, second, y, alpha=0.7).loss)
    wrapped.eval()
    out = wrapped(x, target=y)
    assert torch.allclose(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(
        net(x), y))
    with pytest.raises(ValueError, match=r"label_smoothing=0\.1 does not apply"):
        RDrop(net, consistency="bernoulli", label_smoothing=0.1)
