"""The dropout-free LM family: its arms get the randomness they name (cfg.noise) and nothing
else, and the report names each arm by its noise source."""

from __future__ import annotations

import torch

from rdrop_experiments import get_experiment, run_experiment
from rdrop_experiments.config import apply_overrides
from rdrop_experiments.frontier import arm_name
from rdrop_experiments.models.causal_lm import CausalTransformerLM
from rdrop_experiments.training import make_step
from rdrop_experiments.verdict import build_verdicts, verdict_line


def lm() -> CausalTransformerLM:
    torch.manual_seed(0)
    return CausalTransformerLM(vocab_size=30, dim=16, heads=2, ffn=32, layers=1, max_len=8,
                               dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)


def test_each_arm_gets_the_randomness_it_names():
    cfg = get_experiment("language-modeling-dropout-free").config
    x, y = torch.randint(1, 30, (3, 8)), torch.randint(1, 30, (3, 8))
    plain = make_step(lm(), cfg, "baseline")
    plain.model.train()
    assert torch.equal(plain(x, target=y).loss, plain(x, target=y).loss)  # no randomness
    for noise in ("embedding:5", "dropout:0.1"):
        rdrop = make_step(lm(), apply_overrides(cfg, {"noise": noise}), "rdrop")
        rdrop.model.train()
        assert float(rdrop(x, target=y).consistency_loss.detach()) > 0  # the passes differ
        rdrop.model.eval()
        with torch.no_grad():  # evaluation is the plain model's
            assert torch.equal(rdrop.model(x), plain.model.eval()(x))
    neftune = make_step(lm(), apply_overrides(cfg, {"noise": "embedding:5"}), "baseline")
    neftune.model.train()
    assert not torch.equal(neftune(x, target=y).loss, neftune(x, target=y).loss)


def test_quick_run_names_four_arms_of_two_points(tmp_path):
    recs = run_experiment("language-modeling-dropout-free", out=tmp_path, variant="quick",
                          progress=False)
    arms: dict[str, int] = {}
    for r in recs:
        assert r["config"]["dropout"] == r["config"]["attention_dropout"] == 0.0
        arms[arm_name(r)] = arms.get(arm_name(r), 0) + 1
    assert arms == {"baseline": 2, "baseline+embedding": 2, "rdrop+embedding": 2,
                    "rdrop+dropout": 2}
    (verdict,) = build_verdicts(recs)
    assert {c.name for c in verdict.comparisons} == {
        f"{arm} - baseline, {kind}" for arm in ("baseline+embedding", "rdrop+embedding",
                                                 "rdrop+dropout")
        for kind in ("best", "equal compute")} | {"rdrop+embedding - baseline+embedding, best"}
    line = verdict_line(verdict)
    assert "R-Drop+dropout (" in line and "R-Drop+embedding (" in line
