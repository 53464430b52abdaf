"""rdrop.training.batching: duplicate inputs along the batch dim, split outputs, find logits."""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from rdrop import RDrop
from rdrop.training.batching import (
    batch_size_of,
    concat_forward,
    concat_inputs,
    duplicate_batch,
    extract_logits,
    split_batch,
)

from reference import reference_rdrop_loss


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


def test_copies_must_be_a_positive_int():
    x = {"ids": torch.zeros(2, 3)}
    for call in (lambda c: duplicate_batch(x, c), lambda c: concat_inputs((), x, c)):
        with pytest.raises(ValueError, match="copies must be >= 1, got 0"):
            call(0)
        with pytest.raises(TypeError, match="copies must be an int, got float"):
            call(2.0)
        with pytest.raises(TypeError, match="copies must be an int, got bool"):
            call(True)


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
    with pytest.raises(TypeError, match=r"logits_fn=lambda out: out\[1\]"):
        extract_logits((torch.tensor(0.5), t))


# ------------------------------------------------------------------- concat_inputs: the rule
def test_first_positional_tensor_defines_the_batch_and_only_matching_tensors_double():
    x, mask, table = torch.randn(3, 2), torch.ones(3, 2), torch.randn(5, 2)
    args, kwargs, layout = concat_inputs((x, 7), {"mask": mask, "table": table, "k": "v"})
    assert args[0].shape == (6, 2) and args[1] == 7
    assert kwargs["mask"].shape == (6, 2) and kwargs["table"] is table and kwargs["k"] == "v"
    assert (layout.batch_size, layout.dim, layout.duplicated) == (3, 0, (0, "mask"))


def test_batched_and_unbatched_names():
    x, emb = torch.randn(4, 2), torch.randn(4, 2)  # same length: ambiguous without names
    _, kw, _ = concat_inputs((), {"x": x, "emb": emb}, unbatched=("emb",))
    assert kw["x"].shape == (8, 2) and kw["emb"] is emb
    args, kw, layout = concat_inputs((x,), {"emb": emb}, batched=(0,))
    assert args[0].shape == (8, 2) and kw["emb"] is emb and layout.duplicated == (0,)
    with pytest.raises(ValueError, match="both batched= and unbatched="):
        concat_inputs((x,), {"emb": emb}, batched=(0,), unbatched=(0,))
    with pytest.raises(ValueError, match=r"batched= names \[1\]"):
        concat_inputs((x,), {"emb": emb}, batched=(1,))


def test_split_output_splits_every_duplicated_tensor():
    _, _, layout = concat_inputs((torch.randn(2, 3),), {}, 2)
    out = {"logits": torch.arange(8.0).reshape(4, 2), "loss": torch.tensor(1.0)}
    first, second = layout.split_output(out)
    assert first["logits"].tolist() == [[0, 1], [2, 3]] and second["logits"][0].tolist() == [4, 5]
    assert first["loss"] is out["loss"]
    with pytest.raises(ValueError, match=r"expected 4 rows.*mode='twice'"):
        layout.split(torch.zeros(3, 2))


# --------------------------------------------------------------------- packed / padding-free
class VarlenModel(nn.Module):
    """Reads packing metadata the way a flash-attention varlen kernel does, and refuses what
    such a kernel would misread; each token attends (a causal running mean) only within its
    own sequence."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.pos = nn.Embedding(11, 8), nn.Embedding(16, 8)
        self.drop, self.head = nn.Dropout(p), nn.Linear(8, 5)

    def forward(self, input_ids, position_ids, cu_seq_lens_q, cu_seq_lens_k, max_length_q,
                max_length_k):
        return self.varlen(self.emb(input_ids), input_ids, position_ids, cu_seq_lens_q,
                           cu_seq_lens_k, max_length_q, max_length_k)

    def varlen(self, emb, input_ids, position_ids, cu_seq_lens_q, cu_seq_lens_k, max_length_q,
               max_length_k):
        if input_ids.shape[0] != 1:
            raise ValueError("varlen: the batch must be flattened to one row")
        tokens = input_ids.shape[1]
        for cu, longest in ((cu_seq_lens_q, max_length_q), (cu_seq_lens_k, max_length_k)):
            lengths = cu.diff()
            if cu[0] != 0 or cu[-1] != tokens or (lengths <= 0).any():
                raise ValueError(f"varlen: boundaries {cu.tolist()} do not cover {tokens} tokens")
            if lengths.max() > longest:
                raise ValueError("varlen: a sequence is longer than max_length")
        expected_pos = torch.cat([torch.arange(int(n)) for n in cu_seq_lens_q.diff()])
        if not torch.equal(position_ids[0], expected_pos):
            raise ValueError("varlen: position_ids do not restart at each boundary")
        h = self.drop(emb[0] + self.pos(position_ids[0]))
        bounds = cu_seq_lens_q.tolist()
        segments = []
        for start, end in itertools.pairwise(bounds):
            seg = h[start:end]
            segments.append(seg.cumsum(0) / torch.arange(1, end - start + 1).unsqueeze(-1))
        return self.head(torch.cat(segments)).unsqueeze(0)  # (1, T, 5)


def _pack():
    # three sequences of lengths 3, 4, 2 packed into one row of 9 tokens
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9]])
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1]])
    cu = torch.tensor([0, 3, 7, 9], dtype=torch.int32)
    return {"input_ids": ids, "position_ids": pos, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": 4, "max_length_k": 4}


def test_packed_batch_is_duplicated_along_its_tokens_with_offset_boundaries():
    _, kw, layout = concat_inputs((), _pack(), 2)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 7, 9, 12, 16, 18]
    assert kw["cu_seq_lens_k"].tolist() == [0, 3, 7, 9, 12, 16, 18]
    assert kw["max_length_q"] == 4 and kw["max_length_k"] == 4
    assert kw["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1] * 2]
    assert kw["input_ids"].shape == (1, 18)
    assert (layout.dim, layout.length, layout.packed) == (1, 9, True)
    three = concat_inputs((), _pack(), 3)[1]["cu_seq_lens_q"].tolist()
    assert three == [0, 3, 7, 9, 12, 16, 18, 21, 25, 27]


def test_packed_concat_forward_passes_equal_the_single_pack_forward():
    model = VarlenModel(p=0.0)  # no dropout: every copy must equal the plain forward
    fwd = concat_forward(model, (), _pack(), 3)
    plain = model(**_pack())
    assert len(fwd.passes) == 3
    for p in fwd.passes:
        torch.testing.assert_close(p, plain)
    # ... and each sequence of the pack equals that sequence run alone.
    alone = model(input_ids=torch.tensor([[4, 5, 6, 7]]), position_ids=torch.tensor([[0, 1, 2, 3]]),
                  cu_seq_lens_q=torch.tensor([0, 4]), cu_seq_lens_k=torch.tensor([0, 4]),
                  max_length_q=4, max_length_k=4)
    torch.testing.assert_close(fwd.passes[1][:, 3:7], alone)


def test_the_varlen_model_rejects_a_pack_doubled_without_offsets():
    batch = _pack()
    batch["input_ids"] = torch.cat([batch["input_ids"]] * 2, dim=1)
    batch["position_ids"] = torch.cat([batch["position_ids"]] * 2, dim=1)
    with pytest.raises(ValueError, match="do not cover 18 tokens"):
        VarlenModel()(**batch)
    with pytest.raises(ValueError, match="concat_inputs"):
        duplicate_batch(_pack(), 2)  # dim-0 duplication refuses packed metadata


def test_rdrop_on_a_packed_batch_equals_the_reference_on_the_same_masks():
    labels = torch.tensor([[2, 0, 4, 1, -100, 3, 3, 0, 1]])
    wrapped = RDrop(VarlenModel(p=0.3), alpha=1.0)
    torch.manual_seed(4)
    out = wrapped(**_pack(), target=labels)
    # Replay: the same masks over the pack duplicated by hand.
    cu = torch.tensor([0, 3, 7, 9, 12, 16, 18])
    torch.manual_seed(4)
    logits = wrapped.model(torch.cat([_pack()["input_ids"]] * 2, 1),
                           torch.cat([_pack()["position_ids"]] * 2, 1), cu, cu, 4, 4)
    ref = reference_rdrop_loss(list(logits.split(9, dim=1)), labels, alpha=1.0)
    torch.testing.assert_close(out.loss.double(), ref["loss"].detach(), rtol=1e-5, atol=1e-6)
    assert out.logits.shape == (1, 9, 5) and out.consistency_loss.item() > 0


class SeqIdxModel(VarlenModel):
    """VarlenModel with the short causal convolution of a linear-attention layer in front: token
    ``t`` adds token ``t - 1`` only when ``seq_idx`` says they are in the same sequence (the
    kernel compares neighbours and nothing else, as ``causal_conv1d`` does)."""

    def forward(self, input_ids, position_ids, cu_seq_lens_q, cu_seq_lens_k, max_length_q,
                max_length_k, seq_idx):
        h = self.emb(input_ids)
        same = (seq_idx[:, 1:] == seq_idx[:, :-1]).unsqueeze(-1)
        h = torch.cat([h[:, :1], h[:, 1:] + h[:, :-1] * same], dim=1)
        return self.varlen(h, input_ids, position_ids, cu_seq_lens_q, cu_seq_lens_k,
                           max_length_q, max_length_k)


def _seq_idx(cu):
    return torch.repeat_interleave(torch.arange(len(cu) - 1, dtype=torch.int32), cu.diff())[None]


def test_seq_idx_is_laid_along_the_tokens_with_each_copy_numbered_after_the_last():
    batch = {**_pack(), "seq_idx": _seq_idx(_pack()["cu_seq_lens_q"])}
    assert batch["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2]]
    kw = concat_inputs((), batch, 3)[1]
    assert kw["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2,
                                       3, 3, 3, 4, 4, 4, 4, 5, 5,
                                       6, 6, 6, 7, 7, 7, 7, 8, 8]]
    assert kw["seq_idx"].dtype == torch.int32
    # it agrees with the offset boundaries, as a kernel reading both needs
    torch.testing.assert_close(kw["seq_idx"], _seq_idx(kw["cu_seq_lens_q"]))
    # without boundaries (DataCollatorWithFlattening(return_flash_attn_kwargs=False)): max + 1
    no_cu = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"],
             "seq_idx": batch["seq_idx"]}
    _, kw, layout = concat_inputs((), no_cu, 2)
    assert kw["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5]]
    assert kw["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1] * 2]
    assert (layout.dim, layout.length) == (1, 9)


@pytest.mark.parametrize("lengths", [[3, 4, 2], [5]], ids=["three-sequences", "one-sequence"])
def test_seq_idx_copies_each_equal_the_single_pack_forward(lengths):
    # One sequence is the case a copy without new indices gets wrong: both copies would be
    # sequence 0, so the kernel would run the convolution across the copies' border.
    ids = torch.arange(1, sum(lengths) + 1)[None] % 11
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
    batch = {"input_ids": ids, "position_ids": pos, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
             "max_length_q": max(lengths), "max_length_k": max(lengths), "seq_idx": _seq_idx(cu)}
    model = SeqIdxModel(p=0.0)
    plain = model(**batch)
    fwd = concat_forward(model, (), batch, 2)
    for p in fwd.passes:
        torch.testing.assert_close(p, plain)
    # the check can fail: the same pack doubled with seq_idx repeated as it is
    doubled = concat_inputs((), {k: v for k, v in batch.items() if k != "seq_idx"}, 2)[1]
    wrong = model(**doubled, seq_idx=torch.cat([batch["seq_idx"]] * 2, dim=1))
    assert torch.equal(wrong[:, sum(lengths):], plain) is (len(lengths) > 1)


def test_seq_idx_it_cannot_lay_out_is_refused_with_the_input_named():
    cases = [
        (torch.zeros(1, 9), "must be an integer tensor of shape \\(1, 9\\)"),
        (torch.zeros(9, dtype=torch.int32), "got \\(9,\\)"),
        (torch.tensor([[0, 0, 0, 1, 1, 1, 1, 3, 3]]), "outside 0..2, the 3 sequences"),
        (torch.tensor([[-1, 0, 0, 1, 1, 1, 1, 2, 2]]), "outside 0..2"),
    ]
    for seq_idx, match in cases:
        with pytest.raises(ValueError, match="'seq_idx'.*" + match):
            concat_inputs((), {**_pack(), "seq_idx": seq_idx}, 2)


def test_packed_batches_it_cannot_duplicate_are_refused_with_the_input_named():
    with pytest.raises(ValueError, match=r"\['seq_lens'\]"):
        concat_inputs((), {**_pack(), "seq_lens": torch.tensor([3, 4, 2])}, 2)
    two_rows = {**_pack(), "input_ids": torch.zeros(2, 9, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"one row of concatenated sequences"):
        concat_inputs((), two_rows, 2)
    with pytest.raises(ValueError, match=r"'token_type_ids' of shape \(1, 4\)"):
        concat_inputs((), {**_pack(), "token_type_ids": torch.zeros(1, 4)}, 2)
    # named unbatched, an unknown key passes through untouched
    seq_idx = torch.zeros(1, 9, dtype=torch.int32)
    _, kw, _ = concat_inputs((), {**_pack(), "seq_idx": seq_idx}, 2, unbatched=("seq_idx",))
    assert kw["seq_idx"] is seq_idx
