"""rdrop tryout RECORD: the library's tryout on a baseline record, through real harness runs."""

from __future__ import annotations

import json

import pytest

from rdrop.training.autostart import plateau_step
from rdrop_experiments.runner import run_experiment
from rdrop_experiments.tryout import TryoutError, record_tryout

QUICK = {"methods": "baseline", "patience": 3, "eval_every": 5, "max_sample_passes": 1200}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    out = tmp_path_factory.mktemp("tryout")
    rec = run_experiment("language-modeling", QUICK, out=out, variant="quick", grid=False,
                         progress=False)[0]
    path = next((out / "language-modeling").glob("baseline-*.json"))
    return out, path, rec


def _valid(rec):
    return [(c["step"], c["valid_perplexity"]) for c in rec["curves"]]


def test_continuations_are_the_baseline_up_to_the_branch(baseline):
    out, _, rec = baseline
    branch = rec["curves"][3]["step"]
    common = {**QUICK, "methods": "rdrop", "alpha": 1.0, "start_step": branch}
    rdrop_run = run_experiment("language-modeling", common, out=out, variant="quick",
                               grid=False, progress=False)[0]
    other_seed = run_experiment("language-modeling", {**QUICK, "branch_seed": 7,
                                                      "branch_step": branch},
                                out=out, variant="quick", grid=False, progress=False)[0]
    before = [p for p in _valid(rec) if p[0] <= branch]
    assert [p for p in _valid(rdrop_run) if p[0] <= branch] == before  # bit for bit
    assert [p for p in _valid(other_seed) if p[0] <= branch] == before
    after = [p for p in _valid(other_seed) if p[0] > branch]
    assert after and after != [p for p in _valid(rec) if p[0] > branch]  # a new seed from there


def test_record_tryout_branches_at_the_plateau_and_writes_its_result(baseline, tmp_path):
    _, path, rec = baseline
    steps, values = zip(*_valid(rec), strict=True)
    expected = plateau_step(values, steps)
    assert expected is not None
    result = record_tryout(path, out=tmp_path, seeds=2, alphas=(1.0,), progress=False)
    assert result.plateau_step == result.checkpoint_step == expected
    assert result.seeds == (rec["seed"], rec["seed"] + 1) and result.alpha == 1.0
    assert result.verdict in ("pays", "does not pay", "not enough evidence")
    assert result.uses_test and len(result.best.per_seed) == 2
    saved = json.loads((tmp_path / "tryout-2seeds.json").read_text())
    assert saved["plateau_step"] == expected and saved["verdict"] == result.verdict
    # the other seed's plain and R-Drop continuations, both branched at the plateau
    branched = [json.loads(p.read_text())["config"]
                for p in (tmp_path / "language-modeling").glob("*.json")]
    assert sorted(c["methods"][0] for c in branched) == ["baseline", "rdrop", "rdrop"]
    assert all(c["start_step"] == expected for c in branched if c["methods"] == ["rdrop"])


def test_bad_records_are_refused(baseline, tmp_path):
    _, path, _ = baseline
    with pytest.raises(TryoutError, match="no such file"):
        record_tryout(tmp_path / "missing.json")
    rdrop_rec = json.loads(path.read_text()) | {"method": "rdrop"}
    (tmp_path / "r.json").write_text(json.dumps(rdrop_rec))
    with pytest.raises(TryoutError, match="branches from a baseline run"):
        record_tryout(tmp_path / "r.json")
    short = json.loads(path.read_text())
    short["curves"] = short["curves"][:2]
    (tmp_path / "short.json").write_text(json.dumps(short))
    with pytest.raises(ValueError, match="no plateau yet"):
        record_tryout(tmp_path / "short.json", out=tmp_path / "o", progress=False)


def test_the_reported_metric_is_compared_in_its_own_direction(baseline, tmp_path, monkeypatch):
    # A family that selects on a validation loss and reports a score (summarization: ROUGE-1,
    # translation: BLEU): the tryout's test values are the score's, higher is better.
    _, path, _ = baseline
    scored = json.loads(path.read_text())
    scored["metric"], scored["higher_is_better"] = "score", True
    for i, c in enumerate(scored["curves"]):
        c["test_score"] = 10.0 + i
    copy = tmp_path / "scored.json"
    copy.write_text(json.dumps(scored))
    seen = {}

    def fake_tryout(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr("rdrop_experiments.tryout.tryout", fake_tryout)
    with pytest.raises(RuntimeError, match="stop here"):
        record_tryout(copy, out=tmp_path / "out", progress=False)
    assert seen["test_values"] == [10.0 + i for i in range(len(scored["curves"]))]
    assert seen["test_higher_is_better"] is True and seen["higher_is_better"] is False
