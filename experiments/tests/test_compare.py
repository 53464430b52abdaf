"""``rdrop compare``: runs pair by config hash, method and seed (not by name); exact reruns,
moved values, moved curves and unpaired records are each counted."""

from __future__ import annotations

import pytest

from rdrop_experiments.cli import main
from rdrop_experiments.compare import compare_folders, pair_records
from rdrop_experiments.storage import result_path, write_json_atomic


def _record(experiment: str, method: str, seed: int, key: str, value: float,
            curve_value: float = 0.5) -> dict:
    return {"experiment": experiment, "method": method, "seed": seed, "key": key,
            "setting": f"methods={method}", "metric": "accuracy", "value": value, "config": {},
            "git_commit": "c" * 40,
            "curves": [{"step": 10, "sample_passes": 320, "valid_accuracy": curve_value,
                        "wall_s": 1.0 + seed}]}


def _write(root, records) -> None:
    for r in records:
        write_json_atomic(result_path(root, r["experiment"], r["method"], r["seed"], r["key"]),
                          r)


def test_pairs_by_config_hash_across_a_rename_and_counts_what_moved(tmp_path):
    old = [_record("translation-reduced", "baseline", 0, "k1", 0.25),
           _record("translation-reduced", "baseline", 1, "k1", 0.30),
           _record("translation-reduced", "rdrop", 0, "k2", 0.40),
           _record("translation-reduced", "rdrop", 1, "k2", 0.40),
           _record("image", "baseline", 0, "k9", 0.70)]  # only in the old folder
    new = [dict(_record("translation", "baseline", 0, "k1", 0.25), curves=[
               dict(old[0]["curves"][0], wall_s=99.0)]),  # wall time alone differs: exact
           _record("translation", "baseline", 1, "k1", 0.3125),  # value moved
           _record("translation", "rdrop", 0, "k2", 0.40, curve_value=0.6),  # a curve moved
           _record("translation", "rdrop", 1, "k3", 0.40),  # another config: unpaired
           _record("translation", "rdrop", 2, "k2", 0.40)]  # a seed the old side lacks
    pairs, only_old, only_new = pair_records(old, new)
    assert (only_old, only_new) == (2, 2)
    by = {(p.method, p.seed): p for p in pairs}
    assert set(by) == {("baseline", 0), ("baseline", 1), ("rdrop", 0)}
    assert by[("baseline", 0)].difference == 0 and by[("baseline", 0)].same_curves
    assert by[("baseline", 1)].difference == pytest.approx(0.0125)
    assert by[("rdrop", 0)].difference == 0 and not by[("rdrop", 0)].same_curves
    assert by[("baseline", 0)].old_experiment == "translation-reduced"

    _write(tmp_path / "old", old)
    _write(tmp_path / "new", new)
    text = compare_folders(tmp_path / "old", tmp_path / "new")
    assert "3 run(s) in both folders; 2 only in the old one, 2 only in the new one." in text
    assert "1 of 3 reproduce exactly" in text
    # accuracy is shown x100, as in rdrop report: |0.3125 - 0.30| = 1.25 points
    assert "| translation | baseline | 2 | 1 | 1.2500 | 0.6250 |" in text
    assert "| translation | methods=rdrop | rdrop | 0 | 40.0000 | 40.0000 | no |" in text


def test_two_records_of_one_run_in_a_folder_are_refused(tmp_path, capsys):
    rec = _record("image", "baseline", 0, "k1", 0.5)
    _write(tmp_path / "a", [rec])
    _write(tmp_path / "b" / "x", [rec])
    _write(tmp_path / "b" / "y", [rec])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "the new folder holds two records of image baseline seed 0" in capsys.readouterr().err


def test_cli_compare_prints_the_table_and_names_a_missing_folder(tmp_path, capsys):
    _write(tmp_path / "a", [_record("image", "baseline", 0, "k1", 0.5)])
    _write(tmp_path / "b", [_record("image", "baseline", 0, "k1", 0.5)])
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "1 of 1 reproduce exactly" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "nosuch")]) == 2
    assert "no results folder" in capsys.readouterr().err
