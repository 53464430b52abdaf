"""The registry's design as data: what the reports need, built from registered experiments."""

from __future__ import annotations

from types import SimpleNamespace as NS

import pytest

from rdrop_experiments.design import (
    Design,
    ExperimentDesign,
    dropout_key,
    point_label,
    setting_label,
)


def _experiment(name="fam", grid=({"methods": ("baseline",), "dropout": 0.1},
                                  {"methods": ("rdrop",), "alpha": 0.3},
                                  {"methods": ("rdrop_alpha0",)})):
    return NS(name=name, grid=grid, config=NS(seeds=4, dataset="d", alpha=0.3),
              variants={"quick": {"seeds": 1, "max_steps": 5}, "long": {"max_steps": 9}},
              paper="+1.2 BLEU")


def test_labels_match_the_records_settings():
    assert setting_label({}) == "default"
    assert setting_label({"methods": ("rdrop", "baseline"), "alpha": 1.0}) == (
        "methods=rdrop/baseline,alpha=1.0")
    assert point_label("methods=rdrop,alpha=1.0,dropout=0.3") == "alpha=1.0,dropout=0.3"
    assert point_label("default") == "default"


def test_dropout_key_is_the_baselines_one_knob():
    assert dropout_key([{"methods": ("rdrop",), "alpha": 1}, {"methods": ("baseline",),
                                                            "weight_decay": 0.1}]) == (
        "weight_decay")
    with pytest.raises(ValueError, match="no baseline dropout dimension"):
        dropout_key([{"methods": ("baseline",), "dropout": 0.1, "lr": 1e-3}])


def test_design_of_registered_experiments():
    design = Design.of([_experiment(), _experiment("abl", grid=({"alpha": 1.0},))])
    fam = design.experiment("fam")
    assert fam == ExperimentDesign(grid=("dropout=0.1", "alpha=0.3", "default"),
                                   dropout_key="dropout", seeds=4, variant_seeds={"quick": 1},
                                   dataset="d", alpha=0.3, paper="+1.2 BLEU")
    assert fam.seeds_for("quick") == 1 and fam.seeds_for("long") == 4
    assert design.experiment("abl").dropout_key is None
    assert design.experiment("other") is None and design.grid("other") == ()
    assert design.missing("any-cell", []) == 0  # no cells given: none is incomplete


def test_missing_runs_are_asked_of_the_registered_cells_only():
    cell = NS(name="fam-100-d8")
    asked = []

    def missing(c, records):
        asked.append((c, len(records)))
        return 7

    design = Design.of([_experiment()], cells=[cell], missing_runs=missing)
    assert design.missing("fam-100-d8", [{}, {}]) == 7 and asked == [(cell, 2)]
    assert design.missing("not-a-cell", [{}]) == 0 and len(asked) == 1
