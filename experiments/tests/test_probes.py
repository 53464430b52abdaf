"""The harness's probes of issue 33 (item 6), each as a new user meets it: `rdrop advise` on a
NaN evaluation, `rdrop report` over a truncated record, `rdrop scale` and `rdrop run` given
what they cannot use."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from rdrop_experiments.advise import AdviseError, advise, read_baseline
from rdrop_experiments.cli import main
from rdrop_experiments.config import CommonConfig, ConfigError, parse_overrides
from rdrop_experiments.report import build_report
from rdrop_experiments.scale import get_cell
from rdrop_experiments.scale_map import MapCell
from rdrop_experiments.storage import write_json_atomic

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ advise: NaN is never a best
def _map_cell(name: str, gap: float) -> MapCell:
    nan = math.nan
    return MapCell(name=name, family="image", source="scale", size=1, model="d", metric="m",
                   higher_is_better=True, seeds=3, chosen_baseline="", chosen_rdrop="",
                   baseline=1.0, rdrop=1.0, best=0.0, best_low=nan, best_high=nan,
                   best_holm=nan, equal=nan, equal_low=nan, equal_high=nan, equal_holm=nan,
                   compute_to_best=2.0, rel=0.01, gap=gap, after_best=0.0, overfit=True,
                   stopped_past_optimum="3/3", alpha=1.0)


def _trainer_state(path: Path, evals: list[float]) -> Path:
    history = []
    for i, value in enumerate(evals):
        history += [{"step": 10 * (i + 1), "loss": 2.0 - 0.5 * i},
                    {"step": 10 * (i + 1), "eval_loss": value}]
    path.write_text(json.dumps({"log_history": history}))  # NaN as JSON's NaN, as HF writes it
    return path


def test_advise_never_takes_a_nan_evaluation_for_the_best(tmp_path, monkeypatch):
    import rdrop_experiments.scale_map as scale_map

    monkeypatch.setattr(scale_map, "map_cells", lambda results, design=None: [
        _map_cell("near-cell", 0.35), _map_cell("far-cell", 3.0)])
    # first evaluation NaN; the finite best is step 20: 1.9 - 1.5 (train loss logged there)
    state = _trainer_state(tmp_path / "trainer_state.json", [math.nan, 1.9, 2.1])
    run = read_baseline(state)
    assert run.best_step == 20 and run.gap == pytest.approx(1.9 - 1.5) and run.evals == 3
    text = advise(state, tmp_path)
    assert text.splitlines()[0].endswith("(step 20, 3 evaluations) = 0.400 nats")
    assert "1 evaluation(s) with a non-finite loss" in text
    assert text.index("near-cell") < text.index("far-cell")  # nearest by the finite gap

    every = _trainer_state(tmp_path / "diverged.json", [math.nan, math.inf])
    with pytest.raises(AdviseError, match=r"every one of the 2 eval_loss values.*NaN or inf"):
        read_baseline(every)


def test_advise_reads_a_record_past_its_nan_curve_points(tmp_path):
    curves = [{"step": 10, "train_loss": 1.0, "valid_loss": math.nan},
              {"step": 20, "train_loss": 0.8, "valid_loss": 1.1},
              {"step": 30, "train_loss": 0.6, "valid_loss": 1.3}]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"experiment": "image", "method": "baseline", "curves": curves}))
    run = read_baseline(path)
    assert run.best_step == 20 and run.gap == pytest.approx(1.1 - 0.8)
    assert "1 curve point(s) with a non-finite loss" in run.note


# --------------------------------------------------- report: a truncated record is named, marked
def _record(method: str, seed: int, value: float, key: str, setting: str) -> dict:
    return {
        "schema": 1, "experiment": "fixture", "variant": "default", "setting": setting,
        "method": method, "seed": seed, "metric": "accuracy", "value": value,
        "higher_is_better": True, "metrics": {"accuracy": value},
        "curves": [{"step": 1, "train_loss": 1.0, "valid_loss": 1.2}], "wall_time_s": 1.0,
        "config": {"alpha": 1.0}, "key": key, "pair_key": "bk" if setting != "other" else "ok",
        "overrides": {}, "command": "rdrop run fixture",
    }


def test_report_names_a_truncated_record_and_marks_the_comparison_that_lost_it(tmp_path):
    folder = tmp_path / "fixture"
    for seed in range(3):
        for method, key, setting, value in (("baseline", "bk", "default", 0.80),
                                            ("rdrop", "rk", "alpha=1", 0.82),
                                            ("baseline", "ok", "other", 0.70),
                                            ("rdrop", "ork", "other", 0.71)):
            write_json_atomic(folder / f"{method}-seed{seed}-{key}.json",
                              _record(method, seed, value + seed / 100, key, setting))
    cut = folder / "rdrop-seed2-rk.json"
    cut.write_text(cut.read_text()[:200])  # cut off mid-write
    (folder / "notes.json").write_text("[1, 2]")  # a JSON file that is no record

    from rdrop_experiments.storage import scan_results

    records, skipped = scan_results(tmp_path)
    assert len(records) == 11 and [s.path.name for s in skipped] == [
        "notes.json", "rdrop-seed2-rk.json"]
    assert skipped[1].describe() == "fixture rdrop seed 2 (config rk)"

    text = build_report(tmp_path, plots=False)
    assert "**2 file(s) skipped**" in text
    assert f"`{cut}`: not valid JSON, truncated or corrupt" in text
    assert "it holds fixture rdrop seed 2 (config rk), a seed lost to fixture [alpha=1]" in text
    assert f"`{folder / 'notes.json'}`: not a run record (a JSON list" in text
    rows = [line for line in text.splitlines() if line.startswith("| fixture |")]
    lost = [r for r in rows if "⚠ lost seeds" in r]
    assert lost and all("| alpha=1 ⚠ lost seeds |" in r and "| 3 / 2 |" in r for r in lost)
    other = [r for r in rows if "| other" in r]
    assert other and not any("⚠" in r for r in other)  # the untouched comparison: unmarked


def test_report_marks_the_verdict_of_a_family_that_lost_a_seed(tmp_path):
    shutil.copytree(REPO / "results" / "image", tmp_path / "image")
    cut = sorted((tmp_path / "image").glob("baseline-seed*.json"))[0]
    cut.write_text(cut.read_text()[:300])
    text = build_report(tmp_path, plots=False)
    assert "**⚠ lost seeds**: the verdicts of image rest on fewer seeds" in text
    assert f"`{cut}`" in text and "the image verdict (⚠ lost seeds)" in text


# -------------------------------------------------------------- scale and run: clear refusals
def test_scale_unknown_cell_is_one_line_with_the_closest(capsys):
    assert main(["scale", "--dry-run", "image-500-vit"]) == 2
    err = capsys.readouterr().err
    assert "unknown cell 'image-500-vit'. Did you mean image-500-vit-d32" in err
    assert "Traceback" not in err
    with pytest.raises(KeyError):  # still a failed lookup for code that catches one
        get_cell("nope")
    with pytest.raises(ConfigError):  # and a user error, the CLI's one line
        get_cell("nope")


def test_scale_refuses_overrides_and_two_extra_arm_flags(capsys):
    assert main(["scale", "image-500-vit-d32", "alpha=2"]) == 2
    assert "scale takes no key=value overrides" in capsys.readouterr().err
    assert main(["scale", "image-500-vit-d32", "--cheaper", "--tuned-dropout"]) == 2
    assert "pass one per command" in capsys.readouterr().err


def test_scale_dry_run_prints_the_plan(tmp_path, capsys):
    assert main(["scale", "--dry-run", "image-500-vit-d32", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "image-500-vit-d32: the first grid" in out
    cell_dir = tmp_path / "image-500-vit-d32" / "image"
    assert "todo  image  [methods=baseline" in out and str(cell_dir) in out
    assert "25 run(s) planned, 25 to run." in out  # 5 first-grid points x 5 seeds
    assert get_cell("image-500-vit-d32").seeds == 5
    assert not cell_dir.exists()  # a dry run writes nothing


def test_a_key_given_twice_is_refused(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"'seeds' is given twice \(seeds=1 and seeds=2\)"):
        parse_overrides(CommonConfig, ["seeds=1", "alpha=2", "seeds=2"])
    assert main(["run", "image", "seeds=1", "seeds=2", "--dry-run", "--out",
                 str(tmp_path)]) == 2
    assert "given twice" in capsys.readouterr().err
