"""start_step in rdrop.training.schedule.rdrop_step: plain steps before it; every_k_steps and the
alpha warm-up count from it."""

from __future__ import annotations

import pytest

from rdrop.training.schedule import rdrop_step


def test_a_hand_written_table():
    # start 3, every 2nd step, warm-up over 3 steps, alpha 3: t = s - 3.
    expected = [(False, 0.0)] * 3 + [
        (True, 1.0),   # s 3, t 0: alpha * 1/3
        (False, 0.0),  # s 4, t 1: off-step of k = 2
        (True, 3.0),   # s 5, t 2: alpha * 3/3
        (False, 0.0),
        (True, 3.0),
        (False, 0.0),
        (True, 3.0),
    ]
    got = [rdrop_step(s, alpha=3.0, every_k_steps=2, alpha_warmup_steps=3, start_step=3)
           for s in range(10)]
    assert [(d.active, d.alpha) for d in got] == expected


@pytest.mark.parametrize("start", [0, 1, 5, 17])
@pytest.mark.parametrize(("k", "n"), [(1, 0), (2, 0), (1, 4), (3, 5)])
def test_a_later_start_is_the_same_schedule_shifted_and_plain_before(start, k, n):
    for s in range(40):
        decision = rdrop_step(s, alpha=2.0, every_k_steps=k, alpha_warmup_steps=n,
                              start_step=start)
        if s < start:
            assert not decision.active and decision.alpha == 0.0
        else:
            assert decision == rdrop_step(s - start, alpha=2.0, every_k_steps=k,
                                          alpha_warmup_steps=n)


def test_start_zero_is_todays_schedule():
    for s in range(12):
        assert rdrop_step(s, alpha=1.5, every_k_steps=3, alpha_warmup_steps=4, start_step=0) == (
            rdrop_step(s, alpha=1.5, every_k_steps=3, alpha_warmup_steps=4))


@pytest.mark.parametrize(("bad", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError),
                                            (None, TypeError)])
def test_bad_start_step_is_refused_by_name(bad, error):
    with pytest.raises(error, match="start_step"):
        rdrop_step(0, alpha=1.0, start_step=bad)
