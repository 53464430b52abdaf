"""Generation families (translation, summarization, language modeling): quick runs end to end,
and the models' dropout control and decoding."""

from __future__ import annotations

import math

import pytest
import torch

from rdrop.training.inspection import active_dropout_rates as dropout_rates
from rdrop_experiments import get_experiment, plan_runs, run_experiment
from rdrop_experiments.models.causal_lm import CausalTransformerLM
from rdrop_experiments.models.seq2seq import Seq2SeqTransformer
from rdrop_experiments.training import set_dropout

CASES = [
    ("translation", "bleu", ("bleu", "chrf", "test_loss", "loss_gap")),
    ("summarization", "rouge1", ("rouge1", "rouge2", "rougeL", "test_loss", "loss_gap")),
    ("language-modeling", "perplexity", ("perplexity", "test_loss", "loss_gap")),
]


def _planned_arms(name: str) -> list[tuple[str, int]]:
    """(method, seed) of every run of the quick protocol: one per grid point and seed."""
    exp = get_experiment(name)
    seeds = exp.variants["quick"].get("seeds", exp.config.seeds)
    return sorted((s["methods"][0], seed) for s in exp.grid for seed in range(seeds))


@pytest.mark.parametrize(("name", "metric", "metrics"), CASES)
def test_quick_run_is_well_formed(tmp_path, name, metric, metrics):
    recs = run_experiment(name, out=tmp_path, variant="quick", progress=False)
    assert len({r["data_hash"] for r in recs}) == 1 and recs[0]["data_hash"]  # one data, all runs
    assert sorted((r["method"], r["seed"]) for r in recs) == _planned_arms(name)
    for r in recs:
        assert r["metric"] == metric and set(metrics) <= set(r["metrics"])
        assert all(math.isfinite(v) for v in r["metrics"].values())
        assert r["selection"] == "best_valid"
        assert r["curves"][0]["step"] == r["config"]["eval_every"]
        assert {"train_loss", "valid_loss", f"test_{metric}", "sample_passes"} <= set(
            r["curves"][0])
        assert r["wall_time_s"] < 60
    if metric == "perplexity":
        v = recs[0]["value"]
        assert 1.0 < v < recs[0]["config"]["vocab_size"] * 2
    else:
        assert recs[0]["extra"]["decoding"] == "greedy"
        assert 0.0 <= recs[0]["value"] <= 1.0  # fractions; the report shows x100
    rd = next(r for r in recs if r["method"] == "rdrop")
    assert rd["curves"][0]["train_consistency"] > 0
    base = next(r for r in recs if r["method"] == "baseline")
    assert base["curves"][0]["train_consistency"] == 0


def test_paper_alphas_and_ablation_grid(tmp_path):
    assert get_experiment("translation").config.alpha == 5.0
    assert get_experiment("translation").config.label_smoothing == 0.1
    assert get_experiment("summarization").config.alpha == 0.7
    assert get_experiment("language-modeling").config.alpha == 1.0
    abl = get_experiment("language-modeling-ablations")
    assert "ablation" in abl.tags
    plan = plan_runs(abl, tmp_path)
    base = [r for r in plan if r.method == "baseline"]
    assert len(base) == abl.config.seeds  # every grid point shares one baseline per seed
    labels = {r.setting for r in plan if r.method == "rdrop"}
    assert {"alpha=0.3", "alpha=10.0", "every_k_steps=5", "num_passes=3",
            "pass_dropouts=0.1/0.3"} <= labels


def test_two_dropout_rates_reach_every_dropout(tmp_path):
    m = Seq2SeqTransformer(vocab_size=32, dim=16, heads=2, ffn=32, encoder_layers=1,
                           decoder_layers=1, dropout=0.3)
    old = set_dropout(m, 0.5)
    assert set(dropout_rates(m).values()) == {0.5}
    set_dropout(m, old)
    assert set(dropout_rates(m).values()) == {0.1, 0.3}
    # per-pass rates through the harness: one short run of the ablation's dropout point
    recs = run_experiment("language-modeling-ablations", out=tmp_path, variant="quick",
                          overrides={"max_steps": 2, "eval_every": 2, "methods": ("rdrop",)},
                          progress=False, dry_run=False)
    pd = [r for r in recs if r["config"]["pass_dropouts"]]
    assert pd and all(math.isfinite(r["value"]) for r in pd)


def test_models_dropout_is_off_in_eval_and_decoding_stops():
    torch.manual_seed(0)
    m = Seq2SeqTransformer(vocab_size=20, dim=16, heads=2, ffn=32, encoder_layers=1,
                           decoder_layers=1, dropout=0.5)
    src, tgt = torch.randint(4, 20, (3, 6)), torch.randint(4, 20, (3, 5))
    src[0, 4:] = 0  # padding
    m.eval()
    assert torch.equal(m(src, tgt), m(src, tgt))
    m.train()
    assert not torch.equal(m(src, tgt), m(src, tgt))
    out = m.greedy_decode(src, bos_id=2, eos_id=3, max_len=7)
    assert out.shape[0] == 3 and out.shape[1] <= 7
    lm = CausalTransformerLM(vocab_size=20, dim=16, heads=2, ffn=32, layers=1, max_len=8)
    x = torch.randint(0, 20, (2, 8))
    lm.eval()
    full = lm(x)
    assert torch.allclose(full[:, :4], lm(x[:, :4]), atol=1e-5)  # causal: no peeking ahead
    with pytest.raises(ValueError, match="max_len"):
        lm(torch.randint(0, 20, (1, 9)))
