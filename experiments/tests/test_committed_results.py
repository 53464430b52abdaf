"""The committed run records still name their configs: for every record under ``results/``, the
config class of its experiment, rebuilt from the record's ``config``, gives back the record's
``key`` and ``pair_key`` (:func:`config_key`). A config field added, renamed, retyped or moved
between classes that changed a hash would orphan the committed evidence (reruns would not find
it, ``rdrop compare`` would not pair it): this test catches it.

``results-protocol1/`` is history: its records predate the second protocol's fields
(``patience``, ``max_sample_passes``, ``chunk_size``, ...), so today's classes give them other
keys; they keep the keys they were written with and are read, not rerun.
"""

from __future__ import annotations

from pathlib import Path

from rdrop_experiments.config import apply_overrides, config_key
from rdrop_experiments.registry import get_experiment
from rdrop_experiments.storage import load_results

RESULTS = Path(__file__).resolve().parents[2] / "results"


def _keys(record: dict) -> tuple[str, str]:
    cls = type(get_experiment(record["experiment"]).config)
    cfg = apply_overrides(cls(), record["config"])
    return config_key(cfg, record["method"]), config_key(cfg, "baseline")


def test_a_changed_config_changes_the_key():
    record = next(r for r in load_results(RESULTS, ["image"]) if r["method"] == "rdrop")
    changed = dict(record, config=dict(record["config"], alpha=record["config"]["alpha"] + 1))
    assert _keys(record)[0] == record["key"] and _keys(changed)[0] != record["key"]


def test_committed_records_keep_their_config_keys():
    records = load_results(RESULTS)
    assert records, f"no committed run records under {RESULTS}"
    moved = [r["_path"] for r in records if _keys(r) != (r["key"], r["pair_key"])]
    assert not moved, f"{len(moved)} of {len(records)} records changed key: {moved[:5]}"
    families = {r["experiment"] for r in records}
    assert {"translation", "summarization"} <= families  # the seq2seq configs are covered
