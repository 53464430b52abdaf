"""Multi-label family: the debtags loader on hand-written apt lists, the metrics against
scikit-learn's, and the quick run of every arm end to end."""

from __future__ import annotations

import gzip

import pytest
import torch

from rdrop_experiments.data.debtags import load_debtags, read_debtags
from rdrop_experiments.families.multilabel import mean_average_precision, multilabel_macro_f1

PACKAGES = """\
Package: pyfoo
Source: foo (1.0-1)
Description-md5: aaa
Section: python
Tag: devel::lang:python, devel::library,
 role::program

Package: foo-doc
Source: foo
Description-md5: bbb
Section: doc
Tag: role::documentation, devel::library

Package: bar
Description-md5: ccc
Section: games
Tag: game::arcade, role::program

Package: notags
Description-md5: ddd
Section: games

Package: rare
Description-md5: eee
Section: games
Tag: use::rare
"""

TRANSLATION = """\
Package: pyfoo
Description-md5: aaa
Description-en: Python library for foo
 Foo does things.

Package: foo-doc
Description-md5: bbb
Description-en: documentation for foo
 Manuals.

Package: bar
Description-md5: ccc
Description-en: a game with bars
 Fun.

Package: notags
Description-md5: ddd
Description-en: untagged
 Nothing.

Package: rare
Description-md5: eee
Description-en: a rare thing
 Odd.
"""


@pytest.fixture
def lists_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RDROP_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "lists"
    d.mkdir()
    (d / "x_dists_s_main_binary-amd64_Packages").write_text(PACKAGES)
    with gzip.open(d / "x_dists_s_main_i18n_Translation-en.gz", "wt") as f:
        f.write(TRANSLATION)
    return d


def test_read_debtags_joins_continuation_lines(lists_dir):
    tags = read_debtags(lists_dir)
    assert tags["pyfoo"] == ["devel::lang:python", "devel::library", "role::program"]
    assert "notags" not in tags


def test_the_most_frequent_tags_are_the_labels_and_untagged_texts_are_left_out(lists_dir):
    data = load_debtags(num_tags=2, lists_dir=lists_dir, valid_frac=0.0, test_frac=0.0)
    assert data.labels == ["devel::library", "role::program"]  # 2 each; then by name
    texts, label_sets = data.splits["train"]
    by_text = dict(zip(texts, label_sets, strict=True))
    assert by_text == {"Python library for foo. Foo does things.": [0, 1],
                       "documentation for foo. Manuals.": [0], "a game with bars. Fun.": [1]}
    assert data.meta["tag_counts"] == {"devel::library": 2, "role::program": 2}
    with pytest.raises(ValueError, match="num_tags"):
        load_debtags(num_tags=0, lists_dir=lists_dir)


def test_metrics_match_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    y = torch.rand(200, 6, generator=g) < 0.3
    scores = torch.rand(200, 6, generator=g) + 0.4 * y
    want_ap = metrics.average_precision_score(y.numpy(), scores.numpy(), average="macro")
    assert abs(mean_average_precision(scores, y.long()) - want_ap) < 1e-9
    pred = scores > 0.7
    want_f1 = metrics.f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0)
    assert abs(multilabel_macro_f1(pred, y) - want_f1) < 1e-9


def test_the_arms_train_on_bce_and_the_bernoulli_consistency():
    """TrainStep with consistency=bernoulli: the baseline's loss is BCEWithLogits of its one
    pass; R-Drop's is multilabel_rdrop_loss of the two copies of its concatenated forward."""
    from torch import nn

    from rdrop import multilabel_rdrop_loss
    from rdrop_experiments.config import CommonConfig
    from rdrop_experiments.training import make_step

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))
    seen = []
    net.register_forward_hook(lambda m, i, o: seen.append(o))
    x, y = torch.randn(5, 6), (torch.rand(5, 4) < 0.4).float()
    cfg = CommonConfig(consistency="bernoulli", alpha=0.7)
    net.train()
    out = make_step(net, cfg, "baseline")(x, target=y)
    assert torch.allclose(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(
        seen[-1], y))
    step = make_step(net, cfg, "rdrop")
    out = step(x, target=y)
    first, second = seen[-1].split(5)
    assert not torch.equal(first, second)
    assert torch.allclose(out.loss, multilabel_rdrop_loss(first, second, y, alpha=0.7).loss)


def test_quick_run_is_well_formed(tmp_path):
    from rdrop_experiments import get_experiment, run_experiment

    recs = run_experiment("multilabel-debtags", out=tmp_path, variant="quick", progress=False)
    exp = get_experiment("multilabel-debtags")
    assert sorted(r["method"] for r in recs) == sorted(s["methods"][0] for s in exp.grid)
    for r in recs:
        assert 0.0 <= r["value"] <= 1.0 and 0.0 <= r["metrics"]["macro_f1"] <= 1.0
        assert len(r["extra"]["labels"]) == 5 and r["extra"]["data_meta"]["tag_counts"]
    rdrop = next(r for r in recs if r["method"] == "rdrop")
    assert rdrop["curves"][-1]["train_consistency"] > 0
