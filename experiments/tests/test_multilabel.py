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
