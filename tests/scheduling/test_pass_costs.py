"""`prefix.PassCosts`: the prefix path or the full one, from the timings of each; the suffix
groups of models without packing."""

from __future__ import annotations

import numpy as np

from explainserve.scheduling import prefix
from explainserve.scheduling.prefix import PassCosts


def test_paths_alternate_until_each_is_timed_then_the_cheaper_is_taken() -> None:
    costs = PassCosts()
    taken = []
    for _ in range(2 * PassCosts.SAMPLES):
        take = costs.choose(500, 1000)
        taken.append(take)
        if take:
            costs.record("prefix", 500, 0.5)  # 1 ms a token
        else:
            costs.full_ran(0.25)  # 0.25 ms a token
    assert taken == [True, False] * PassCosts.SAMPLES
    # 500 tokens at 1 ms > 1000 at 0.25 ms: the full path, except every EXPLORE-th decision.
    picks = [costs.choose(500, 1000) for _ in range(2 * PassCosts.EXPLORE)]
    explored = [i for i, take in enumerate(picks) if take]
    assert len(explored) == 2
    assert all((2 * PassCosts.SAMPLES + i + 1) % PassCosts.EXPLORE == 0 for i in explored)
    assert costs.choose(100, 1000)  # 0.1 s against 0.25 s


def test_a_rate_is_the_median_of_the_last_timings() -> None:
    costs = PassCosts()
    assert costs.rate("prefix") is None
    for seconds in (9.0, 1.0, 2.0):  # a slow first call
        costs.record("prefix", 1000, seconds)
    assert costs.rate("prefix") == 0.002
    for _ in range(PassCosts.WINDOW):
        costs.record("prefix", 1000, 3.0)
    assert costs.rate("prefix") == 0.003
    costs.full_ran(1.0)  # no full-path decision pending: not recorded
    assert len(costs.rates["full"]) == 0


def test_suffix_groups_cover_every_row_and_trade_padding_for_passes() -> None:
    # Occlusion-like suffix lengths: a triangle, plus repeats.
    lengths = np.asarray([*range(8, 72), *([8] * 7)], dtype=np.int64)
    groups = prefix._groups(lengths)
    rows = np.sort(np.concatenate(groups))
    np.testing.assert_array_equal(rows, np.arange(len(lengths)))
    padded = sum(len(g) * int(lengths[g].max()) for g in groups)
    cost = padded + prefix.GROUP_COST_TOKENS * len(groups)
    # Better than one group (every row padded to 71) and than a group per length.
    one = len(lengths) * 71 + prefix.GROUP_COST_TOKENS
    each = int(lengths.sum()) + prefix.GROUP_COST_TOKENS * len(np.unique(lengths))
    assert cost < min(one, each)
    for length in np.unique(lengths):  # rows of one length stay together
        assert sum(bool((lengths[g] == length).any()) for g in groups) == 1
    firsts = [int(lengths[g].max()) for g in groups]
    assert firsts == sorted(firsts, reverse=True)
    assert prefix._groups(np.asarray([5], dtype=np.int64))[0].tolist() == [0]


def test_close_calls_try_the_other_path_more_often() -> None:
    """Predicted times within `CLOSE` of each other: every `CLOSE_EXPLORE`-th decision takes
    the other path, so a path timed slow in a burst of load is timed again soon; far apart,
    every `EXPLORE`-th only."""
    for prefix_seconds, every in ((0.3, PassCosts.CLOSE_EXPLORE), (0.6, PassCosts.EXPLORE)):
        costs = PassCosts()
        for _ in range(PassCosts.SAMPLES):
            assert costs.choose(500, 1000)
            costs.record("prefix", 500, prefix_seconds)
            assert not costs.choose(500, 1000)
            costs.full_ran(0.25)
        decided = 2 * PassCosts.SAMPLES
        picks = [costs.choose(500, 1000) for _ in range(2 * PassCosts.EXPLORE)]
        explored = [decided + i + 1 for i, take in enumerate(picks) if take]
        assert explored  # the prefix path, 1.2x or 2.4x slower, is still tried
        assert all(d % every == 0 for d in explored)
        assert len(explored) == (decided + 2 * PassCosts.EXPLORE) // every - decided // every
