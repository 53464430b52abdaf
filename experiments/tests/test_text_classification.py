"""Text classification family: quick run, Debian list parsing, CSV/TSV and HF loaders."""

from __future__ import annotations

import gzip
import shutil
import subprocess

import pytest

from rdrop_experiments import get_experiment, run_experiment
from rdrop_experiments.data.debian import load_debian_descriptions, read_list_file
from rdrop_experiments.data.text_classification import (
    hash_split,
    load_debian_sections,
    load_hf_text_dataset,
    load_text_classification,
    load_text_csv,
)

PACKAGES = """\
Package: pyfoo
Source: foo (1.0-1)
Version: 1.0-1
Description: Python library for foo
Description-md5: aaa
Section: python

Package: foo-doc
Source: foo
Description-md5: bbb
Section: doc

Package: bargame
Description-md5: ccc
Section: contrib/games

Package: nodesc
Description-md5: zzz
Section: games

Package: baz
Description-md5: ddd
Section: games
"""

TRANSLATION = """\
Package: pyfoo
Description-md5: aaa
Description-en: Python library for foo
 Foo does things.
 .
 This package has the Python module.

Package: foo-doc
Description-md5: bbb
Description-en: documentation for foo
 Manuals.

Package: bargame
Description-md5: ccc
Description-en: a game with bars
 Fun.

Package: baz
Description-md5: ddd
Description-en: another game
 More fun.
"""

RELEASE = "Origin: Debian\nSuite: stable\nVersion: 12.1\nDate: Sat, 01 Jan 2026 00:00:00 UTC\n"


@pytest.fixture
def lists_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RDROP_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "lists"
    d.mkdir()
    (d / "x_dists_s_main_binary-amd64_Packages").write_text(PACKAGES)
    with gzip.open(d / "x_dists_s_main_i18n_Translation-en.gz", "wt") as f:
        f.write(TRANSLATION)
    (d / "x_dists_s_InRelease").write_text(RELEASE)
    return d


def test_debian_lists_join(lists_dir):
    pkgs, meta = load_debian_descriptions(lists_dir)
    by = {p.package: p for p in pkgs}
    assert set(by) == {"pyfoo", "foo-doc", "bargame", "baz"}  # nodesc has no translation
    assert by["pyfoo"].source == "foo" and by["bargame"].section == "games"
    assert by["pyfoo"].long == "Foo does things.\n\nThis package has the Python module."
    assert meta["snapshot"][0]["Version"] == "12.1"
    again, _ = load_debian_descriptions(lists_dir)  # from the cache
    assert again == pkgs


@pytest.mark.skipif(shutil.which("lz4") is None, reason="no lz4 command")
def test_lz4_lists(tmp_path):
    plain = tmp_path / "t"
    plain.write_text(TRANSLATION)
    subprocess.run(["lz4", "-q", str(plain), str(tmp_path / "t.lz4")], check=True)
    assert read_list_file(tmp_path / "t.lz4") == TRANSLATION


def test_debian_sections(lists_dir):
    data = load_debian_sections(num_classes=2, lists_dir=lists_dir, valid_frac=0.0,
                                test_frac=0.0)
    assert data.classes[0] == "games" and len(data.classes) == 2
    texts, _ = data.splits["train"]
    assert "a game with bars. Fun." in texts and len(texts) == 3
    with pytest.raises(ValueError, match="unknown Debian sections"):
        load_debian_sections(sections=("kernel",), lists_dir=lists_dir)
    # Binary packages of one source land in one split.
    assert hash_split("foo", 0, 0.5, 0.25) == hash_split("foo", 0, 0.5, 0.25)


def test_csv_file_and_glue_style_folder(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("text,label\n" + "".join(f"sentence {i},{'pos' if i % 2 else 'neg'}\n"
                                          for i in range(40)))
    data = load_text_csv(f, valid_frac=0.2, test_frac=0.2)
    assert data.classes == ["neg", "pos"] and sum(data.sizes().values()) == 40
    glue = tmp_path / "rte"
    glue.mkdir()
    (glue / "train.tsv").write_text("sentence1\tsentence2\tlabel\na\tb\t0\nc\td\t1\ne\tf\t1\n")
    (glue / "dev.tsv").write_text("sentence1\tsentence2\tlabel\ng\th\t1\n")
    pair = load_text_classification("csv", str(glue), text_column="sentence1,sentence2")
    assert pair.splits["train"][0][0] == ("a", "b") and pair.sizes()["test"] == 1
    with pytest.raises(ValueError, match="missing column"):
        load_text_csv(glue, text_column="text")


def test_hf_text_needs_datasets(tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            load_hf_text_dataset(tmp_path)
        return
    import datasets

    ds = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(10)],
                                     "label": [i % 2 for i in range(10)]})
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "hf"))
    assert load_hf_text_dataset(tmp_path / "hf").sizes()["test"] == 10


def _have_debian_lists() -> bool:
    try:
        load_debian_descriptions()
    except FileNotFoundError:
        return False
    return True


@pytest.mark.skipif(not _have_debian_lists(), reason="no apt lists with Translation-en (make data)")
def test_quick_run_is_well_formed(tmp_path):
    recs = run_experiment("text-classification", out=tmp_path, variant="quick", progress=False)
    assert len({r["data_hash"] for r in recs}) == 1 and recs[0]["data_hash"]  # one data, all runs
    exp = get_experiment("text-classification")
    assert sorted((r["method"], r["seed"]) for r in recs) == sorted(
        (s["methods"][0], 0) for s in exp.grid)  # one seed per grid point (quick)
    assert {r["method"] for r in recs} >= {"rdrop_alpha0", "rdrop_stop_gradient"}
    for r in recs:
        assert 0.0 <= r["value"] <= 1.0 and 0.0 <= r["metrics"]["macro_f1"] <= 1.0
        assert r["curves"][0]["step"] == r["config"]["eval_every"]
        assert len(r["extra"]["classes"]) == 4
        assert r["extra"]["data_meta"]["snapshot"]


def test_recipe_on_a_csv_with_pairs(tmp_path):
    f = tmp_path / "pairs.tsv"
    f.write_text("a\tb\tlabel\n" + "".join(f"the cat {i}\tsat on a mat\t{i % 3}\n"
                                           for i in range(30)))
    recs = run_experiment("text-classification",
                          {"dataset": "csv", "data_path": str(f), "text_column": "a,b",
                           "max_steps": 2, "eval_every": 2, "seeds": 1, "max_length": 16,
                           "batch_size": 4, "progress": False,
                           "pass_dropouts": (0.1, 0.3), "rdrop_mode": "twice"},
                          out=tmp_path / "out", progress=False)
    # (alpha=0.5 used to be passed here too and silently replaced by the grid's alphas: a grid
    # key the user sets is refused now, see test_runner.py)
    assert len(recs) == len(get_experiment("text-classification").grid)  # every arm, grid point
    assert recs[0]["extra"]["classes"] == ["0", "1", "2"]
