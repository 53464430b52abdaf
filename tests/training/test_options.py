"""rdrop.training.options: one options object for the step, every combination rule in its
``validate``, built once by every entry point (wrapper, Lightning module, HF trainer)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from rdrop import RDrop
from rdrop.training.noise import Noise
from rdrop.training.options import StepOptions
from rdrop.training.step import LogitsLoss, TrainingStep


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))


def _kwargs(options: StepOptions, names: tuple[str, ...]) -> dict:
    """The options as an entry point's keyword arguments of these names."""
    return {name: getattr(options, name) for name in names}


# ---------------------------------------------------------------------------- the rules
RULES = [
    ({"stop_gradient": True, "num_passes": 3}, ValueError,
     r"stop_gradient=True uses one gradient pass.*num_passes must be 2, got 3"),
    ({"second_pass_fraction": 0.5, "num_passes": 3}, ValueError,
     r"second_pass_fraction=0\.5 compares two passes.*num_passes=3 \(use num_passes=2\)"),
    ({"second_pass_fraction": 0.5, "consistency": "bernoulli"}, ValueError,
     r"second_pass_fraction=0\.5.*consistency='bernoulli' \(the subset loss takes a class"),
    ({"second_pass_fraction": 0.5, "reduction": "sum"}, ValueError,
     r"second_pass_fraction=0\.5.*reduction='sum' \(use reduction='mean'\)"),
    ({"second_pass_fraction": 0.5, "fused_linear": True, "chunk_size": 8}, ValueError,
     r"second_pass_fraction=0\.5.*fused_linear=True \(use fused_linear=False"),
    ({"fused_linear": True, "chunk_size": 8, "num_passes": 3}, ValueError,
     r"fused_linear=True supports num_passes=2 only .*got 3"),
    ({"fused_linear": True, "chunk_size": 8, "consistency": "js"}, ValueError,
     r"fused_linear=True computes the symmetric KL only, got consistency='js'"),
    ({"fused_linear": True}, TypeError,
     r"fused_linear=True computes the loss chunk_size rows at a time.*got None"),
    ({"label_smoothing": 0.1, "consistency": "mse"}, ValueError,
     r"label_smoothing=0\.1 does not apply to consistency='mse'"),
    ({"label_smoothing": 0.1, "consistency": "bernoulli"}, ValueError,
     r"label_smoothing=0\.1 does not apply to consistency='bernoulli'"),
    ({"chunk_size": 8, "num_passes": 3}, ValueError,
     r"chunk_size supports two passes.*num_passes=3"),
    ({"chunk_size": 8, "consistency": "js"}, ValueError,
     r"chunk_size supports two passes.*consistency='js'"),
    ({"chunk_size": 8, "reduction": "none"}, ValueError,
     r"chunk_size supports two passes.*reduction='none'"),
    ({"chunk_size": 8, "consistency": "bernoulli"}, ValueError,
     r"chunk_size supports two passes.*consistency='bernoulli'"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), RULES)
def test_each_combination_rule_is_refused_with_its_fix(kwargs, error, match):
    with pytest.raises(error, match=match):
        StepOptions(**kwargs)


@pytest.mark.parametrize(("kwargs", "error", "match"), RULES)
def test_the_same_options_alone_are_valid(kwargs, error, match):
    # Each rule is about the combination: every option of it is accepted on its own.
    for name, value in kwargs.items():
        alone = {name: value}
        if name == "fused_linear":
            alone["chunk_size"] = 8
        StepOptions(**alone)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"num_passes": 1}, ValueError, "num_passes must be >= 2"),
    ({"num_passes": 2.0}, TypeError, "num_passes must be an int"),
    ({"mode": "thrice"}, ValueError, r"mode must be one of \('concat', 'twice'\)"),
    ({"stop_gradient": 1}, TypeError, "stop_gradient must be a bool"),
    ({"check_finite": "yes"}, TypeError, "check_finite must be a bool"),
    ({"fused_linear": None}, TypeError, "fused_linear must be a bool"),
    ({"second_pass_fraction": 0.0}, ValueError, r"must lie in \(0, 1\]"),
    ({"noise": "lora"}, ValueError, "noise='lora' needs a rate"),
    ({"noise": "gaussian"}, ValueError, "noise kind must be one of"),
    ({"consistency": "l2"}, ValueError, "consistency must be one of"),
    ({"reduction": "max"}, ValueError, "reduction must be one of"),
    ({"ignore_index": None}, TypeError, "ignore_index must be an int"),
    ({"label_smoothing": 1.0}, ValueError, r"label_smoothing must be in \[0, 1\)"),
    ({"chunk_size": 0}, ValueError, "chunk_size must be a positive int"),
])
def test_each_option_is_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        StepOptions(**kwargs)


def test_messages_name_the_entry_points_arguments():
    with pytest.raises(ValueError, match=r"^rdrop_second_pass_fraction=0\.5 .*"
                                         r"rdrop_num_passes=3 \(use rdrop_num_passes=2\).*"
                                         r"or use rdrop_second_pass_fraction=1\.0\.$"):
        StepOptions(num_passes=3, second_pass_fraction=0.5, prefix="rdrop_")
    with pytest.raises(ValueError, match=r"^rdrop_noise='lora' needs a rate"):
        StepOptions(noise="lora", prefix="rdrop_")
    with pytest.raises(ValueError, match=r"^rdrop_num_passes must be >= 2"):
        StepOptions(num_passes=1, prefix="rdrop_")


def test_values_are_canonical_and_frozen():
    options = StepOptions(ignore_index=-1, label_smoothing=0, second_pass_fraction=1,
                          noise="dropout:0.2")
    assert type(options.label_smoothing) is float and options.label_smoothing == 0.0
    assert type(options.second_pass_fraction) is float
    assert options.noise == Noise("dropout", 0.2)
    assert StepOptions(noise=None) == StepOptions(noise="dropout") == StepOptions()
    assert hash(StepOptions(noise="embedding:5")) == hash(StepOptions(noise="embedding:5.0"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.num_passes = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="num_passes=2"):  # a replace is checked again
        dataclasses.replace(options, num_passes=3, second_pass_fraction=0.5)


# ------------------------------------------------------------------------------ the step
def test_step_takes_the_options_or_builds_them_from_keywords():
    options = StepOptions(num_passes=3, mode="twice", consistency="js", label_smoothing=0.1)
    step = TrainingStep(options)
    assert step.options is options
    assert (step.num_passes, step.mode, step.stop_gradient) == (3, "twice", False)
    assert step.loss == LogitsLoss(consistency="js", label_smoothing=0.1)
    # The keywords (and the options of a given loss) build the same options: the harness's way.
    legacy = TrainingStep(num_passes=3, mode="twice",
                          loss=LogitsLoss(consistency="js", label_smoothing=0.1))
    assert legacy.options == options
    with pytest.raises(TypeError, match="options= or as keywords, not both"):
        TrainingStep(options, num_passes=3)
    with pytest.raises(TypeError, match=r"options must be a rdrop\.training\.options\.StepOptions"):
        TrainingStep(3)  # type: ignore[arg-type]
    # A loss's own options take part in the rules (chunk_size needs two passes).
    with pytest.raises(ValueError, match="chunk_size supports two passes"):
        TrainingStep(num_passes=3, loss=LogitsLoss(chunk_size=8))


def test_a_loss_without_subset_is_refused_for_the_fraction():
    class Plain:
        def __call__(self, passes, target, alpha, num_items_in_batch=None):
            raise AssertionError("not called")

    with pytest.raises(ValueError, match=r"a subset method.*got Plain"):
        TrainingStep(StepOptions(second_pass_fraction=0.5), loss=Plain())
    TrainingStep(StepOptions(), loss=Plain())


# --------------------------------------------------------------------- the entry points
VALID = StepOptions(consistency="js", ignore_index=-1, label_smoothing=0.1, num_passes=2,
                    stop_gradient=True, second_pass_fraction=0.5, noise="dropout:0.2")


def test_the_wrapper_round_trips_the_options():
    options = dataclasses.replace(VALID, mode="twice", check_finite=False)
    names = tuple(f.name for f in dataclasses.fields(StepOptions) if f.name != "fused_linear")
    wrapped = RDrop(_net(), **_kwargs(options, names))
    assert wrapped.step_options == options
    assert wrapped._step.options is wrapped.step_options
    assert (wrapped.num_passes, wrapped.stop_gradient, wrapped.second_pass_fraction,
            wrapped.consistency, wrapped.label_smoothing) == (2, True, 0.5, "js", 0.1)
    with pytest.raises(AttributeError):
        wrapped.num_passes = 3  # one copy: the step's options


def test_the_lightning_module_round_trips_the_options():
    lightning = pytest.importorskip("rdrop.integrations.lightning")
    names = ("consistency", "ignore_index", "label_smoothing", "num_passes", "stop_gradient",
             "second_pass_fraction", "noise")

    class Net(lightning.RDropLightningModule):
        def __init__(self) -> None:
            super().__init__(**_kwargs(VALID, names))
            self.net = _net()

        def forward(self, x):
            return self.net(x)

    module = Net()
    assert module.rdrop_step_options == VALID
    assert module.rdrop_training_step.options is module.rdrop_step_options


def _hf_trainer(tmp_path, **kw):
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertForSequenceClassification

    from rdrop.integrations.hf import RDropTrainer, RDropTrainingArguments

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, num_labels=3)
    args = RDropTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                  save_strategy="no", disable_tqdm=True,
                                  label_smoothing_factor=kw.pop("label_smoothing", 0.0))
    return RDropTrainer(model=BertForSequenceClassification(cfg), args=args, **kw)


def _batch(b: int = 4, regression: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    labels = torch.randn(b, generator=g) if regression else torch.arange(b) % 3
    return {"input_ids": torch.randint(1, 50, (b, 6), generator=g), "labels": labels}


def test_the_hf_trainer_round_trips_the_options(tmp_path):
    trainer = _hf_trainer(tmp_path, rdrop_consistency="js", rdrop_second_pass_fraction=0.5,
                          rdrop_noise="dropout:0.2", label_smoothing=0.1)
    expected = StepOptions(consistency="js", label_smoothing=0.1, second_pass_fraction=0.5,
                           noise="dropout:0.2")
    assert trainer.rdrop_step_options == expected
    trainer.model.train()
    trainer.compute_loss(trainer.model, _batch())
    assert trainer._rdrop_step[1].options is trainer.rdrop_step_options


def test_the_hf_trainer_builds_its_step_once(tmp_path, monkeypatch):
    built: list[StepOptions] = []

    class Counting(TrainingStep):
        def __init__(self, options=None, **kw):
            built.append(options)
            super().__init__(options, **kw)

    from rdrop.integrations.hf import trainer as hf_trainer

    monkeypatch.setattr(hf_trainer, "TrainingStep", Counting)
    trainer = _hf_trainer(tmp_path, rdrop_num_passes=3)
    trainer.model.train()
    losses = [trainer.compute_loss(trainer.model, _batch()) for _ in range(4)]
    assert all(torch.isfinite(loss) for loss in losses)
    assert built == [StepOptions(num_passes=3)]
    # A batch that changes what the step captures (the automatic consistency: float labels are
    # regression) builds it again, once.
    trainer.model.config.num_labels = 1
    trainer.model.classifier = nn.Linear(16, 1)
    for _ in range(3):
        trainer.compute_loss(trainer.model, _batch(regression=True))
    assert [o.consistency for o in built] == ["kl", "mse"]
    assert built[1] == StepOptions(consistency="mse", num_passes=3)


def test_the_hf_step_is_built_from_the_options_checked_at_construction(tmp_path, monkeypatch):
    # The per-batch path re-checks nothing: options are not validated again at compute_loss.
    trainer = _hf_trainer(tmp_path)
    trainer.model.train()
    checked: list[str] = []
    original = StepOptions.validate

    def counting(self, *, prefix=""):
        checked.append(prefix)
        original(self, prefix=prefix)

    monkeypatch.setattr(StepOptions, "validate", counting)
    for _ in range(3):
        trainer.compute_loss(trainer.model, _batch())
    assert checked == []
