"""The tryout-vs-full agreement table: the full comparison's verdict in the tryout's words."""

from __future__ import annotations

import pytest

from rdrop_experiments.agreement import (
    AgreementRow,
    agreement_markdown,
    full_verdict,
    same_metric,
)


@pytest.mark.parametrize(("mean", "low", "high", "p", "higher", "expected"), [
    (-60.0, -73.0, -47.0, 0.003, False, "pays"),           # perplexity down, Holm p < 0.05
    (-60.0, -73.0, -47.0, 0.08, False, "not enough evidence"),  # interval clear, Holm not
    (2.0, 0.5, 3.5, 0.01, True, "pays"),                    # accuracy up
    (2.0, 0.5, 3.5, 0.01, False, "does not pay"),           # a loss that went up
    (-1.3, -1.8, -0.8, 0.02, True, "does not pay"),         # BLEU down
    (0.1, -1.0, 1.2, 0.9, True, "not enough evidence"),
])
def test_full_verdict_reads_the_interval_on_the_gain_side(mean, low, high, p, higher, expected):
    assert full_verdict(mean, low, high, p, higher) == expected


def test_agreement_markdown_counts_agreement_and_compute():
    rows = [AgreementRow("a", "pays", 10.0, "-50 [-60, -40]", "pays", "alpha=10", "-60", True,
                         0.2),
            AgreementRow("b", "not enough evidence", 1.0, "+1 [-2, +4]", "does not pay",
                         "alpha=1", "-1", False, 0.3, followup=(4, "does not pay", True, 0.4))]
    text = agreement_markdown(rows)
    assert "| a | pays, 10, -50 [-60, -40] | pays, alpha=10, -60 | yes | 20% | – |" in text
    assert "| no | 30% | 4, does not pay, yes, 40% |" in text
    assert "the same metric: 1/2 (50%), at 25% of the full comparison's compute" in text
    assert "asked for (1 families): 1/1 agree, at 40% of the compute" in text
    assert agreement_markdown([]) == ""


@pytest.mark.parametrize(("saved", "selection", "metric", "expected"), [
    ({"test_metric": "test_rouge1"}, "valid_loss", "rouge1", True),    # the reported metric
    ({}, "valid_loss", "rouge1", False),                               # an older tryout: NLL
    ({"test_metric": "test_loss"}, "valid_loss", "bleu", False),       # said, and not BLEU
    ({}, "valid_perplexity", "perplexity", True),                      # selects on it anyway
])
def test_a_tryout_compares_with_the_full_one_only_on_the_same_metric(saved, selection, metric,
                                                                     expected):
    assert same_metric(saved, selection, metric) is expected
