"""Loaders of the generation families on small files written here, the BPE (training split
only), the hash split, the OSIS cleaner, and the LM windows."""

from __future__ import annotations

import shutil

import pytest
import torch

from rdrop_experiments.data.parallel import clean_osis, load_parallel, read_parallel_files
from rdrop_experiments.data.text import (
    PairData,
    hash_split,
    load_hf_text_splits,
    load_lm_corpus,
    load_summarization,
    read_raw_text_splits,
    train_bpe,
)
from rdrop_experiments.families.language_modeling import make_blocks
from rdrop_experiments.seq2seq import encode_pairs


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_parallel_files_and_alias_names(tmp_path):
    _write(tmp_path / "train.de", ["hallo welt", "guten tag", "", "danke"])
    _write(tmp_path / "train.en", ["hello world", "good day", "", "thanks"])
    _write(tmp_path / "dev.de", ["ja"])
    _write(tmp_path / "dev.en", ["yes"])
    _write(tmp_path / "test.de", ["nein"])
    _write(tmp_path / "test.en", ["no"])
    data = load_parallel("text", str(tmp_path), src_lang="de", tgt_lang="en")
    assert data.sizes() == {"train": 3, "valid": 1, "test": 1}  # blank pair dropped
    assert data.splits["valid"] == [("ja", "yes")]
    (tmp_path / "test.en").write_text("no\nextra\n")
    with pytest.raises(ValueError, match="must align"):
        read_parallel_files(tmp_path, "de", "en")
    with pytest.raises(FileNotFoundError, match="train"):
        read_parallel_files(tmp_path, "fr", "en")
    with pytest.raises(ValueError, match="needs data_path"):
        load_parallel("text")


def test_summarization_and_raw_text_files(tmp_path):
    for split, n in (("train", 20), ("test", 3)):
        _write(tmp_path / f"{split}.source", [f"document {i} about things" for i in range(n)])
        _write(tmp_path / f"{split}.target", [f"summary {i}" for i in range(n)])
    data = load_summarization("text", str(tmp_path))
    assert data.sizes() == {"train": 19, "valid": 1, "test": 3}  # valid carved from train
    lm = tmp_path / "wiki"
    lm.mkdir()
    for split in ("train", "valid", "test"):
        _write(lm / f"wiki.{split}.tokens", [" = Title = ", "", f"some {split} text ."])
    corpus = load_lm_corpus("text", str(lm))
    assert corpus.splits["test"] == ["= Title =", "some test text ."]
    shutil.move(lm / "wiki.train.tokens", lm / "train.txt")
    assert read_raw_text_splits(lm).sizes()["train"] == 2


def test_saved_hf_dataset(tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ImportError, match="pip install datasets"):
            load_hf_text_splits(tmp_path, ("text",))
        pytest.skip("`datasets` not installed: checked the ImportError message only")
    rows = [{"translation": {"de": f"satz {i}", "en": f"sentence {i}"}} for i in range(6)]
    ds = datasets.Dataset.from_list(rows)
    datasets.DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(
        str(tmp_path / "mt"))
    data = load_parallel("hf", str(tmp_path / "mt"), src_lang="de", tgt_lang="en")
    assert data.sizes() == {"train": 6, "valid": 6, "test": 6}
    assert data.splits["test"][1] == ("satz 1", "sentence 1")
    cnn = datasets.Dataset.from_dict({"article": ["a long text"] * 4, "highlights": ["short"] * 4})
    datasets.DatasetDict({"train": cnn, "test": cnn}).save_to_disk(str(tmp_path / "cnn"))
    assert load_summarization("hf", str(tmp_path / "cnn")).splits["test"][0] == (
        "a long text", "short")
    wt = datasets.Dataset.from_dict({"text": ["line one", "", "line two"]})
    datasets.DatasetDict({"train": wt, "test": wt}).save_to_disk(str(tmp_path / "wt"))
    assert load_lm_corpus("hf", str(tmp_path / "wt")).splits["test"] == ["line one", "line two"]


def test_bpe_is_trained_on_the_training_split_only():
    raw = PairData({
        "train": [("the cat sat on the mat", "le chat")] * 40,
        "valid": [("zyzzyva zyzzyva", "x")] * 40,
        "test": [("quokkaquokka quokkaquokka", "y")] * 40,
    }, "toy")
    data = encode_pairs(raw, vocab_size=120, src_max=64, tgt_max=64, truncate_src=False,
                        caps={}, cache_name=None)
    vocab = data.tokenizer.get_vocab()
    assert any("cat" in t for t in vocab)
    # test-only (and valid-only) words were never seen: no merges, not even their letters
    assert not any("quokka" in t or "zyzz" in t for t in vocab)
    assert "q" not in vocab and "▁q" not in vocab
    assert data.sizes() == {"train": 40, "valid": 40, "test": 40}
    assert data.tgt["train"][0][0].item() == 2 and data.tgt["train"][0][-1].item() == 3


def test_bpe_cache_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("RDROP_CACHE", str(tmp_path))
    texts = ["alpha beta gamma"] * 10
    a = train_bpe(texts, 60, cache_name="t")
    assert len(list((tmp_path / "tokenizers").glob("t-*.json"))) == 1
    b = train_bpe(texts, 60, cache_name="t")
    assert a.encode("alpha gamma").ids == b.encode("alpha gamma").ids


def test_hash_split_is_deterministic_and_seeded():
    keys = [f"Book {i}:{j}" for i in range(30) for j in range(30)]
    a = [hash_split(k, 0, 0.1, 0.1) for k in keys]
    assert a == [hash_split(k, 0, 0.1, 0.1) for k in keys]
    assert a != [hash_split(k, 1, 0.1, 0.1) for k in keys]
    frac = a.count("test") / len(a)
    assert 0.06 < frac < 0.14


def test_osis_cleaning():
    xml = ('<div type="x-milestone" sID="pv1"/><w lemma="strong:G1">Blessed</w> '
           '<w>are</w> <w>the</w> <w>poor</w>,<note type="crossReference"><reference>Isaiah 57:15'
           '</reference></note> <title type="sub">Heading</title>for theirs.')
    assert clean_osis(xml) == "Blessed are the poor, for theirs."


def test_lm_windows_predict_each_token_once():
    x, y = make_blocks(torch.arange(4, 14), 4)
    assert x.shape == (3, 4)
    assert (y != 0).sum().item() == 9  # 10 tokens -> 9 predictions, padding excluded
    assert torch.equal(x.flatten()[1:9], y.flatten()[:8])


@pytest.mark.skipif(shutil.which("mod2imp") is None, reason="libsword-utils not installed")
def test_bible_loader_has_no_leakage_between_splits():
    data = load_parallel("bible")
    sizes = data.sizes()
    assert sizes["train"] > 20000 and sizes["test"] > 500
    train = set(data.splits["train"])
    assert not train & set(data.splits["test"])
    train_src = {s for s, _ in train} | {t for _, t in train}
    assert not any(s in train_src or t in train_src for s, t in data.splits["test"])
    assert not any("<" in s or "<" in t for s, t in data.splits["test"][:200])
