"""rdrop.batching: duplicate inputs along the batch dim, split outputs, find logits."""

from __future__ import annotations

import collections
from dataclasses import dataclass

import pytest
import torch

from rdrop.batching import batch_size_of, duplicate_batch, extract_logits, split_batch


class Encoding(collections.UserDict):
    """Stands in for transformers.BatchEncoding (a UserDict with extra attributes)."""

    def __init__(self, data, tag="enc"):
        super().__init__(data)
        self.tag = tag


def test_duplicate_walks_nested_containers_and_keeps_types():
    Pair = collections.namedtuple("Pair", ["a", "b"])
    x = torch.arange(6).reshape(3, 2)
    obj = {
        "enc": Encoding({"input_ids": x, "mask": torch.ones(3, 2)}),
        "pair": Pair(x, torch.tensor(7.0)),
        "list": [x, "text", None],
        "other": torch.zeros(5),  # dim 0 is not the batch: passes through
    }
    d = duplicate_batch(obj, copies=3)
    assert isinstance(d["enc"], Encoding) and d["enc"].tag == "enc"
    assert torch.equal(d["enc"]["input_ids"], torch.cat([x, x, x]))
    assert isinstance(d["pair"], Pair) and d["pair"].b.item() == 7.0
    assert d["list"][1:] == ["text", None]
    assert d["other"].shape == (5,)
    assert obj["enc"]["input_ids"] is x  # the input is not modified


def test_split_inverts_duplicate():
    x = {"logits": torch.randn(4, 3), "loss": torch.tensor(1.0)}
    parts = split_batch(duplicate_batch(x, 2), 2)
    assert len(parts) == 2
    for part in parts:
        assert torch.equal(part["logits"], x["logits"])
        assert part["loss"].item() == 1.0


def test_split_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible"):
        split_batch(torch.zeros(5, 2), 2)


def test_batch_size_errors_without_tensors():
    with pytest.raises(ValueError, match="no tensor with a batch dimension"):
        batch_size_of({"a": 1, "b": [torch.tensor(3.0)]})


def test_extract_logits_from_the_usual_outputs():
    t = torch.zeros(2, 3)

    @dataclass
    class Output:
        logits: torch.Tensor

    assert extract_logits(t) is t
    assert extract_logits(Output(t)) is t
    assert extract_logits({"logits": t}) is t
    assert extract_logits((t, "aux")) is t
    with pytest.raises(TypeError, match="logits_fn"):
        extract_logits({"scores": t})
