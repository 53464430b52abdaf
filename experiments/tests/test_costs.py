"""rdrop scale --costs: each cell's hours from its records' wall times and threads, and a
4x cell extrapolated linearly from the largest measured one of its family and model."""

from __future__ import annotations

import json

import pytest

from rdrop_experiments.cli import main
from rdrop_experiments.costs import cell_costs, extrapolate


def _record(folder, name, seconds, *, threads=1, device="cpu"):
    folder.mkdir(parents=True, exist_ok=True)
    rec = {"experiment": folder.name, "method": "baseline", "seed": 0, "metric": "accuracy",
           "value": 0.5, "curves": [], "wall_time_s": seconds,
           "config": {"num_threads": threads, "device": device}}
    (folder / name).write_text(json.dumps(rec))


@pytest.fixture
def root(tmp_path):
    _record(tmp_path / "image-500-vit-d32" / "image", "a.json", 600.0)
    _record(tmp_path / "image-500-vit-d32" / "image", "b.json", 300.0, threads=4)
    _record(tmp_path / "image-2000-vit-d32" / "image", "a.json", 3600.0)
    _record(tmp_path / "image-2000-vit-d32" / "image", "b.json", 1800.0, device="cuda",
            threads=8)  # a GPU run counts its wall time once, not per thread
    (tmp_path / "image-2000-vit-d32" / "image" / "cut.json").write_text('{"experi')
    (tmp_path / "notes").mkdir()  # not a cell
    return tmp_path


def test_hours_are_wall_time_times_threads_per_cell(root):
    costs = {c.cell: c for c in cell_costs(root)}
    assert set(costs) == {"image-500-vit-d32", "image-2000-vit-d32"}
    small, large = costs["image-500-vit-d32"], costs["image-2000-vit-d32"]
    assert (small.family, small.size, small.model) == ("image", 500, "vit-d32")
    assert small.runs == 2 and small.hours == pytest.approx((600 + 4 * 300) / 3600)
    assert small.longest_minutes == pytest.approx(10.0) and small.device == "cpu"
    assert large.runs == 2 and large.hours == pytest.approx((3600 + 1800) / 3600)
    assert large.device == "cpu+cuda"
    assert [c.cell for c in cell_costs(root, ["image-500-vit-d32"])] == ["image-500-vit-d32"]


def test_extrapolation_is_linear_from_the_largest_cell(root):
    guess = extrapolate(cell_costs(root), "image", "vit-d32", 8000)
    assert guess.extrapolated and guess.cell == "image-8000-vit-d32"
    assert guess.hours == pytest.approx(1.5 * 4) and guess.longest_minutes == pytest.approx(240)
    with pytest.raises(ValueError, match="no measured cell of translation with model d64"):
        extrapolate(cell_costs(root), "translation", "d64", 10)


def test_the_cli_prints_both_tables(root, capsys):
    assert main(["scale", "--costs", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| image-500-vit-d32 | 2 | cpu | 0.5 | 10.0 |" in out
    assert "| image-8000-vit-d32 (extrapolated) | ~2 | cpu+cuda | ~6.0 | ~240.0 |" in out
    assert main(["scale", "--costs", "--out", str(root / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
