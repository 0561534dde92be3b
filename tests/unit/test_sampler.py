"""llmd/engine/sampler.py against a reference sampler written plainly in numpy (full sort, full
softmax): the tokens the cuts keep must be the same, row by row, and many draws must follow
the reference's probabilities within a chi-square bound. Seeds are fixed, so every run draws
the same tokens and the bounds are checked on the same counts."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from llmd.engine import distributions
from llmd.engine.distributions import Cut, Envelope, Nucleus, Whole, Workspace
from llmd.engine.sampler import TokenSampler
from llmd.sampling import resolve

Z_999 = 3.090232
"""The standard normal's 0.999 quantile: the chi-square tests fail one run in a thousand by
chance, and with fixed seeds a passing run always passes."""


def reference(logits: Any, params: Any, history: list[int]) -> Any:
    """The probability of every token, computed the plain way."""
    x = np.array(logits, dtype=np.float32)
    for token, bias in params.logit_bias.items():
        x[token] += np.float32(bias)
    window = history[-params.repeat_last_n :] if params.repeat_last_n > 0 else []
    for token, count in Counter(window).items():
        value = x[token]
        if value <= 0:
            value = value * np.float32(params.repeat_penalty)
        else:
            value = value / np.float32(params.repeat_penalty)
        value -= np.float32(count) * np.float32(params.frequency_penalty) + np.float32(
            params.presence_penalty
        )
        x[token] = value
    n = len(x)
    if params.temperature <= 0:
        probs = np.zeros(n)
        probs[int(np.argmax(x))] = 1.0
        return probs
    z = x.astype(np.float64) / params.temperature
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    order = np.argsort(-x, kind="stable")
    keep = np.ones(n, dtype=bool)
    if 0 < params.top_k < n:
        keep &= x >= x[order[params.top_k - 1]]
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    if params.top_p < 1.0:
        cumulative = np.cumsum(probs[order])
        last = min(int(np.argmax(cumulative >= params.top_p)), n - 1)
        if cumulative[-1] < params.top_p:
            last = n - 1
        keep &= x >= x[order[last]]
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    if params.min_p > 0.0:
        keep &= probs >= params.min_p * probs.max()
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


def assert_same_cut(ids: Any, mine: Any, row: Any, params: Any) -> None:
    """The tokens kept (`ids`, with probabilities `mine`) are the reference's. The one
    allowed difference: a token at the top_p boundary when the mass before it is within
    1e-6 of p, where the float32 exps summed over the whole vocabulary (~1e-7 relative
    error) may fall either side."""
    probs = reference(row, params, [])
    expected = set(np.flatnonzero(probs > 0).tolist())
    got = set(ids.tolist())
    assert len(got) == len(ids)
    if got == expected:
        rtol = 1e-5 if len(ids) == len(row) else 1e-9  # float32 over the whole row
        np.testing.assert_allclose(mine, probs[ids], rtol=rtol)
        return
    assert params.top_p < 1.0 and params.top_k == 0, got ^ expected
    z = row.astype(np.float64) / params.temperature
    softmax = np.exp(z - z.max())
    softmax /= softmax.sum()
    for token in got ^ expected:
        before = softmax[row > row[token]].sum()
        assert abs(before - params.top_p) < 1e-6, (token, before)


def rows(n: int, count: int, spread: float, seed: int) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * spread).astype(np.float32) for _ in range(count)]


def chi_square_bound(df: int) -> float:
    """The chi-square distribution's 0.999 quantile (Wilson-Hilferty approximation)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + Z_999 * math.sqrt(a)) ** 3


def chi_square(counts: Counter[int], probs: Any, draws: int) -> tuple[float, int]:
    """The statistic and its degrees of freedom, tokens expected fewer than 5 times pooled.
    A token the reference never draws must never be drawn."""
    assert all(probs[t] > 0 for t in counts), [t for t in counts if probs[t] == 0]
    expected = probs * draws
    big = np.flatnonzero(expected >= 5)
    observed = np.array([counts.get(int(t), 0) for t in big], dtype=np.float64)
    stat = float(((observed - expected[big]) ** 2 / expected[big]).sum())
    rest_expected = draws - expected[big].sum()
    rest_observed = draws - observed.sum()
    bins = len(big)
    if rest_expected >= 5:
        stat += (rest_observed - rest_expected) ** 2 / rest_expected
        bins += 1
    else:
        assert rest_observed <= max(5.0, 10 * rest_expected)
    return stat, max(bins - 1, 1)


BASE = resolve()
CASES = {
    "temperature 1": replace(BASE),
    "0.7 and top_p 0.95": replace(BASE, temperature=0.7, top_p=0.95),
    "top_k 40": replace(BASE, top_k=40),
    "min_p 0.1": replace(BASE, min_p=0.1),
    "all three, 1.3": replace(BASE, temperature=1.3, top_k=50, top_p=0.9, min_p=0.02),
    "penalties": replace(BASE, repeat_penalty=1.3, frequency_penalty=0.5, presence_penalty=0.4),
    "logit bias": replace(BASE, temperature=0.8, logit_bias={3: 4.0, 7: -100.0, 11: 2.5}),
}
HISTORY = [1, 2, 2, 3, 5, 8, 8, 8, 13, 1, 0]
"""The tokens written before, for the penalties (a few of them the likeliest, with the
peaked rows below, whose first tokens are made to lead)."""


def peaked(n: int, seed: int) -> Any:
    row = rows(n, 1, 2.0, seed)[0]
    row[:16] += np.float32(6.0)  # a few clear favourites, as after most prompts
    return row


def flat(n: int, seed: int) -> Any:
    return rows(n, 1, 0.5, seed)[0]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    ("shape", "n", "draws"),
    [("peaked", 49152, 6000), ("flat", 49152, 6000), ("peaked", 300, 20000), ("flat", 300, 20000)],
)
def test_draws_follow_the_reference_distribution(name: str, shape: str, n: int, draws: int) -> None:
    params = CASES[name]
    row = peaked(n, 1) if shape == "peaked" else flat(n, 2)
    history = HISTORY if name == "penalties" else []
    sampler = TokenSampler(params, 42, Workspace(n))
    for token in history:
        sampler.accept(token)
    # One distribution, many draws from it (each as `choose` makes it: one uniform number).
    distribution = sampler.distribution(sampler.logits(row))
    counts = Counter(sampler.draw(distribution) for _ in range(draws))
    probs = reference(row, params, history)
    stat, df = chi_square(counts, probs, draws)
    assert stat < chi_square_bound(df), (stat, df)


def test_the_chi_square_check_tells_a_different_distribution() -> None:
    """The bound is tight enough to see a temperature of 0.9 where 1.0 was asked for."""
    n, draws = 300, 20000
    row = peaked(n, 1)
    sampler = TokenSampler(replace(BASE, temperature=0.9), 42, Workspace(n))
    distribution = sampler.distribution(row)
    counts = Counter(sampler.draw(distribution) for _ in range(draws))
    stat, df = chi_square(counts, reference(row, BASE, []), draws)
    assert stat > chi_square_bound(df), (stat, df)


@pytest.mark.parametrize(
    "params",
    [
        replace(BASE, top_p=0.9),
        replace(BASE, temperature=0.7, top_p=0.95),
        replace(BASE, temperature=1.5, top_p=0.5),
        replace(BASE, top_k=40),
        replace(BASE, top_k=300),
        replace(BASE, top_k=1),
        replace(BASE, min_p=0.1),
        replace(BASE, temperature=0.5, min_p=0.05),
        replace(BASE, top_k=100, top_p=0.8),
        replace(BASE, top_p=0.9, min_p=0.3),
        replace(BASE, top_p=0.99, min_p=0.001),
        replace(BASE, temperature=2.0, top_k=500, top_p=0.95, min_p=0.01),
    ],
    ids=repr,
)
@pytest.mark.parametrize(("n", "spread"), [(5000, 3.0), (5000, 1.0), (200, 2.0), (49152, 2.5)])
def test_the_cuts_keep_exactly_the_reference_tokens(params: Any, n: int, spread: float) -> None:
    workspace = Workspace(n)
    count = 6 if n > 10_000 else 40
    for i, row in enumerate(rows(n, count, spread, seed=n)):
        sampler = TokenSampler(params, i, workspace)
        assert_same_cut(*sampler.distribution(row).probabilities(), row, params)


def test_ties_at_a_cut_are_all_kept() -> None:
    row = np.zeros(1000, np.float32)
    row[[5, 6, 7]] = 3.0
    row[[8, 9]] = 2.0
    top_k = TokenSampler(replace(BASE, top_k=4), 0, Workspace(1000)).distribution(row)
    assert sorted(top_k.probabilities()[0].tolist()) == [5, 6, 7, 8, 9]
    top_p = TokenSampler(replace(BASE, top_p=0.01), 0, Workspace(1000)).distribution(row)
    assert sorted(top_p.probabilities()[0].tolist()) == [5, 6, 7]


def test_no_cut_gives_every_token_its_softmax_probability() -> None:
    row = rows(49152, 1, 3.0, 5)[0]
    distribution = TokenSampler(replace(BASE, temperature=0.6), 0, Workspace(49152)).distribution(
        row
    )
    assert isinstance(distribution, Envelope)
    ids, mine = distribution.probabilities()
    assert ids.tolist() == list(range(49152))
    np.testing.assert_allclose(mine, reference(row, replace(BASE, temperature=0.6), []), rtol=1e-5)


@pytest.mark.parametrize("share", [0.0, 1.0])
@pytest.mark.parametrize("name", ["temperature 1", "0.7 and top_p 0.95", "top_p 0.6"])
def test_a_head_taken_as_the_whole_row_or_gathered_gives_the_same_distribution(
    share: float, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A head over HEAD_SHARE of the vocabulary is the whole row (no gather, no tail): share 0
    takes every row that way, share 1 never. Either way the draws follow the reference and
    the cuts keep its tokens."""
    monkeypatch.setattr(distributions, "HEAD_SHARE", share)
    params = {
        "temperature 1": BASE,
        "0.7 and top_p 0.95": replace(BASE, temperature=0.7, top_p=0.95),
        "top_p 0.6": replace(BASE, top_p=0.6),
    }[name]
    row = flat(300, 7)
    sampler = TokenSampler(params, 5, Workspace(300))
    whole = Whole(row, float(row.max()), 1.0 / params.temperature, sampler.workspace)
    assert (whole.head is row) == (share == 0.0)  # the row itself, not a gathered copy
    # No cut: Whole's own draws (Envelope's last resort); top_p: the cut through Whole.
    distribution = whole if params.top_p >= 1.0 else sampler.cut(row)
    draws = 20000
    counts = Counter(sampler.draw(distribution) for _ in range(draws))
    stat, df = chi_square(counts, reference(row, params, []), draws)
    assert stat < chi_square_bound(df), (stat, df)
    for i, other in enumerate(rows(49152, 4, 3.0, seed=11)):
        distribution = TokenSampler(params, i, Workspace(49152)).distribution(other)
        assert_same_cut(*distribution.probabilities(), other, params)


@pytest.mark.parametrize("offset", [-200.0, 0.0, 200.0])
@pytest.mark.parametrize("name", ["temperature 1", "0.7 and top_p 0.95"])
def test_a_whole_row_far_from_zero_is_shifted_to_its_top_first(
    offset: float, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole row's exps are taken of the scaled logits themselves when that cannot
    overflow or lose the head (SHIFT_FREE), else of their distance to the top: logits all
    near +200 or -200 must draw and cut as the reference does."""
    monkeypatch.setattr(distributions, "HEAD_SHARE", 0.0)
    params = BASE if name == "temperature 1" else replace(BASE, temperature=0.7, top_p=0.95)
    row = (flat(300, 9) + np.float32(offset)).astype(np.float32)
    sampler = TokenSampler(params, 2, Workspace(300))
    whole = Whole(row, float(row.max()), 1.0 / params.temperature, sampler.workspace)
    assert (whole.unit == 1.0) == (offset != 0.0)
    made = sampler.distribution(row)
    # No cut: Whole's draws; top_p: the cut through Whole, and the draws by rejection.
    for distribution in [whole] if isinstance(made, Envelope) else [sampler.cut(row), made]:
        draws = 20000
        counts = Counter(sampler.draw(distribution) for _ in range(draws))
        stat, df = chi_square(counts, reference(row, params, []), draws)
        assert stat < chi_square_bound(df), (stat, df)
        assert_same_cut(*distribution.probabilities(), row, params)


TAIL_CASES = {
    "temperature 1": BASE,
    "0.7 and top_p 0.95": replace(BASE, temperature=0.7, top_p=0.95),
    "top_p 0.6": replace(BASE, top_p=0.6),
    "top_p 0.99, min_p 0.01": replace(BASE, top_p=0.99, min_p=0.01),
}


@pytest.mark.parametrize("name", list(TAIL_CASES))
@pytest.mark.parametrize(("shape", "n"), [("peaked", 300), ("flat", 300), ("peaked", 49152)])
def test_a_heavy_tail_is_drawn_from_and_cut_exactly(
    name: str, shape: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tail under e^-TAIL is computed only when a draw or a top_p cut needs it: with
    TAIL at 1 instead of 20 it holds much of the mass, and the draws and cuts must still
    be the reference's."""
    monkeypatch.setattr(distributions, "TAIL", 1.0)
    params = TAIL_CASES[name]
    row = peaked(n, 4) if shape == "peaked" else flat(n, 5)
    sampler = TokenSampler(params, 3, Workspace(n))
    probs = reference(row, params, [])
    distribution = sampler.distribution(row)
    if isinstance(distribution, Envelope):  # no cut: Whole's draws, Envelope's last resort
        distribution = distribution.whole()
    if isinstance(distribution, Nucleus):  # the cut through Whole (rejection: `Nucleus` tests)
        distribution = distribution.cut()
    if isinstance(distribution, Whole):
        assert distribution.upper > 1.5 * distribution.lower  # the tail weighs
    draws = 20000
    counts = Counter(sampler.draw(distribution) for _ in range(draws))
    stat, df = chi_square(counts, probs, draws)
    assert stat < chi_square_bound(df), (stat, df)
    for i, other in enumerate(rows(n, 10, 2.0, seed=n)):
        distribution = TokenSampler(params, i, Workspace(n)).distribution(other)
        assert_same_cut(*distribution.probabilities(), other, params)


def lone(n: int, token: int) -> Any:
    """A row where only `token` can be drawn (the rest refused, as a grammar's filter does)."""
    row = np.full(n, -np.inf, np.float32)
    row[token] = 1.5
    return row


ENVELOPE_ROWS = {
    "flat, 300 (5 columns of 60)": lambda: flat(300, 21),
    "peaked, 1007 (15 columns one token longer)": lambda: peaked(1007, 22),
    "flat, 50 (one column)": lambda: flat(50, 23),
    "one token holds ~all, 1007": lambda: one_sure(1007, 24),
    "200 allowed, the rest refused, 1007": lambda: refused(1007, 25),
    "near +200, 300": lambda: (flat(300, 26) + np.float32(200.0)).astype(np.float32),
    "near -200, 1007": lambda: (peaked(1007, 27) - np.float32(200.0)).astype(np.float32),
}


def one_sure(n: int, seed: int) -> Any:
    row = rows(n, 1, 1.0, seed)[0]
    row[n // 2] += np.float32(8.0)  # ~94% of the mass on one token, a few percent spread
    return row


def refused(n: int, seed: int) -> Any:
    row = np.full(n, -np.inf, np.float32)
    allowed = np.random.default_rng(seed).choice(n, 200, replace=False)
    row[allowed] = rows(200, 1, 1.5, seed)[0]
    return row


@pytest.mark.parametrize("temperature", [1.0, 0.4, 2.0, 0.05])
@pytest.mark.parametrize("name", list(ENVELOPE_ROWS))
def test_a_draw_without_a_cut_is_drawn_by_rejection_exactly(name: str, temperature: float) -> None:
    """No cut: `Envelope` proposes under the column maxima and accepts by each token's
    weight. Its draws must follow the reference on every layout (columns of two sizes, one
    column), on rows nearly sure of one token, with refused (-inf) tokens and whole columns
    of them, and on rows far from zero (at temperature 0.05, exp(scale * logit) overflows
    float32 and the weights are taken from the top)."""
    row = ENVELOPE_ROWS[name]()
    params = replace(BASE, temperature=temperature)
    sampler = TokenSampler(params, 9, Workspace(len(row)))
    distribution = sampler.distribution(row)
    assert isinstance(distribution, Envelope)
    draws = 20000
    counts = Counter(sampler.draw(distribution) for _ in range(draws))
    stat, df = chi_square(counts, reference(row, params, []), draws)
    assert stat < chi_square_bound(df), (stat, df)


@pytest.mark.parametrize(("proposals", "rounds"), [(1, 0), (1, 2), (4, 1)])
def test_a_draw_handed_to_whole_after_the_rounds_is_still_exact(
    proposals: int, rounds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ROUNDS batches without an accepted proposal the draw is Whole's: with no round
    every draw is; with rounds of 1-4 proposals, a mix of both. Exact either way."""
    monkeypatch.setattr(distributions, "PROPOSALS", proposals)
    monkeypatch.setattr(distributions, "ROUNDS", rounds)
    for row in (one_sure(1007, 31), flat(300, 32)):
        sampler = TokenSampler(BASE, 4, Workspace(len(row)))
        distribution = sampler.distribution(row)
        draws = 20000
        counts = Counter(sampler.draw(distribution) for _ in range(draws))
        stat, df = chi_square(counts, reference(row, BASE, []), draws)
        assert stat < chi_square_bound(df), (stat, df)


@pytest.mark.parametrize("n", [50, 64, 300, 1007, 49152])
def test_every_token_of_the_envelope_layout_can_be_drawn(n: int) -> None:
    """Each token is in exactly one column, at one row: the first and last of the full rows,
    the longer columns' extra tokens, and the last token all come back when they are the
    only one allowed; the columns weigh as many tokens as they hold."""
    workspace = Workspace(n)
    assert workspace.full * workspace.columns + workspace.extra == n
    assert workspace.extra < workspace.columns and int(workspace.sizes.sum()) == n
    # Every token weighs 1 in a row of zeros: columns of two sizes weigh their tokens (one
    # size: the columns weigh alike, the size a common factor left out).
    total = Envelope(np.zeros(n, np.float32), 1.0, workspace).total
    assert total == (n if workspace.extra else workspace.columns)
    full_rows = workspace.full * workspace.columns
    for token in {0, workspace.columns - 1, full_rows - 1, min(full_rows, n - 1), n - 1}:
        sampler = TokenSampler(BASE, token, workspace)
        assert [sampler.sample(lone(n, token)) for _ in range(3)] == [token] * 3


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_seed_gives_the_same_tokens(name: str) -> None:
    params = CASES[name]
    n = 3000
    series = [peaked(n, s) for s in range(40)]

    def run(seed: int) -> list[int]:
        sampler = TokenSampler(params, seed, Workspace(n))
        return [sampler.sample(row) for row in series]

    first = run(7)
    assert run(7) == first
    assert any(run(s) != first for s in (8, 9, 10))


def test_choosing_is_one_distribution_and_one_draw() -> None:
    params = CASES["all three, 1.3"]
    row = peaked(3000, 3)
    one, other = TokenSampler(params, 5, Workspace(3000)), TokenSampler(params, 5, Workspace(3000))
    distribution = other.distribution(row)
    assert [one.choose(row) for _ in range(50)] == [other.draw(distribution) for _ in range(50)]


def test_greedy_is_the_first_of_equal_maxima() -> None:
    workspace = Workspace(5000)
    sampler = TokenSampler(replace(BASE, temperature=0.0), 0, workspace)
    for row in rows(5000, 20, 3.0, 11):
        assert sampler.sample(row) == int(row.argmax())
    row = np.zeros(5000, np.float32)
    row[[17, 4000]] = 1.0
    assert sampler.sample(row) == 17
    state = sampler.rng.bit_generator.state
    sampler.sample(row)
    assert sampler.rng.bit_generator.state == state  # greedy draws nothing


def test_greedy_with_bias_and_penalties_is_the_argmax_of_the_adjusted_logits() -> None:
    params = replace(BASE, temperature=0.0, repeat_penalty=2.0, logit_bias={9: 0.5})
    sampler = TokenSampler(params, 0, Workspace(20))
    row = np.arange(20, dtype=np.float32)  # 19 leads, 9 + 0.5 does not
    assert sampler.sample(row) == 19
    assert sampler.sample(row) == 18  # 19 / 2 = 9.5 now trails
    assert sampler.sample(row) == 17


def test_penalties_follow_llama_cpp_over_the_last_n_tokens_returned() -> None:
    params = replace(
        BASE, repeat_penalty=1.5, frequency_penalty=0.25, presence_penalty=0.5, repeat_last_n=4
    )
    sampler = TokenSampler(params, 0, Workspace(10))
    row = np.array([2.0, -2.0, 3.0, 0.0, 1.0, 1, 1, 1, 1, 1], np.float32)
    before = row.copy()
    for token in (4, 0, 1, 2, 0):  # 4 falls out of the window of 4
        sampler.accept(token)
    got = sampler.logits(row)
    expected = row.copy()
    expected[0] = 2.0 / 1.5 - 2 * 0.25 - 0.5
    expected[1] = -2.0 * 1.5 - 0.25 - 0.5
    expected[2] = 3.0 / 1.5 - 0.25 - 0.5
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(row, before)  # the logits row itself is never written
    assert sampler.counts == {0: 2, 1: 1, 2: 1}


def test_neutral_parameters_leave_the_row_alone() -> None:
    sampler = TokenSampler(BASE, 0, Workspace(10))
    row = np.ones(10, np.float32)
    sampler.accept(3)
    assert sampler.logits(row) is row and not sampler.history


NUCLEUS_ROWS = {
    **ENVELOPE_ROWS,
    "peaked, 5000": lambda: peaked(5000, 41),
    "flat, 5000": lambda: flat(5000, 42),
    "spread 3, 5000": lambda: rows(5000, 1, 3.0, 43)[0],
}
NUCLEUS_CASES = [(0.7, 0.95), (1.0, 0.9), (1.5, 0.5), (0.4, 0.99)]


def nucleus(row: Any, temperature: float, top_p: float, seed: int = 1) -> tuple[Any, Any]:
    params = replace(BASE, temperature=temperature, top_p=top_p)
    sampler = TokenSampler(params, seed, Workspace(len(row)))
    distribution = sampler.distribution(row)
    assert isinstance(distribution, Nucleus)
    return sampler, distribution


@pytest.mark.parametrize(("temperature", "top_p"), NUCLEUS_CASES)
@pytest.mark.parametrize("name", list(NUCLEUS_ROWS))
def test_a_top_p_cut_by_rejection_keeps_exactly_the_reference_tokens(
    name: str, temperature: float, top_p: float
) -> None:
    """`Nucleus.keeps` decides every token of the row as the reference cut does, on every
    layout (columns of two sizes, one column, refused tokens, rows far from zero)."""
    row = NUCLEUS_ROWS[name]()
    _, distribution = nucleus(row, temperature, top_p)
    kept = reference(row, replace(BASE, temperature=temperature, top_p=top_p), []) > 0
    drawable = np.flatnonzero(np.isfinite(row))
    assert [distribution.keeps(int(t)) for t in drawable] == kept[drawable].tolist()


def test_the_bounds_settle_most_tokens_and_the_whole_mass_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether a token is kept is settled by the bounds on the rest of the row for most
    tokens, and by the whole mass near the cut's edge: both happen on these rows (a bound
    that settled nothing, or everything, would be wrong or useless)."""
    whole_mass = Nucleus.mass
    needed: list[int] = []

    def counted(self: Nucleus) -> float:
        needed.append(1)
        return whole_mass(self)

    monkeypatch.setattr(Nucleus, "mass", counted)
    decided = 0
    for make in NUCLEUS_ROWS.values():
        row = make()
        for temperature, top_p in NUCLEUS_CASES:
            _, distribution = nucleus(row, temperature, top_p)
            for token in np.flatnonzero(np.isfinite(row)):
                distribution.keeps(int(token))
                decided += 1
    assert 0 < len(needed) < decided / 10, (len(needed), decided)


@pytest.mark.parametrize("tries", [8, 1, 0])
@pytest.mark.parametrize(("temperature", "top_p"), NUCLEUS_CASES)
@pytest.mark.parametrize("name", ["flat, 300 (5 columns of 60)", "peaked, 5000", "near +200, 300"])
def test_draws_by_rejection_follow_the_reference_top_p_cut(
    name: str, temperature: float, top_p: float, tries: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Draws from the whole kept only inside the cut follow the cut's distribution; after
    NUCLEUS_TRIES misses the draw is the cut's own (none: every draw; one: a mix), exact too."""
    monkeypatch.setattr(distributions, "NUCLEUS_TRIES", tries)
    row = NUCLEUS_ROWS[name]()
    sampler, distribution = nucleus(row, temperature, top_p, seed=tries)
    draws = 20000
    counts = Counter(sampler.draw(distribution) for _ in range(draws))
    probs = reference(row, replace(BASE, temperature=temperature, top_p=top_p), [])
    stat, df = chi_square(counts, probs, draws)
    assert stat < chi_square_bound(df), (stat, df)


@pytest.mark.parametrize(
    ("params", "kind"),
    [
        (replace(BASE, top_p=0.95), Nucleus),
        (replace(BASE, top_p=0.5), Nucleus),
        (replace(BASE, top_p=0.4), Cut),  # too few draws would be kept
        (replace(BASE, top_p=0.9, min_p=0.05), Cut),
        (replace(BASE, top_p=0.9, top_k=40), Cut),
        (replace(BASE, top_p=0.9, top_k=5000), Nucleus),  # top_k over the vocabulary: no cut
        (replace(BASE, top_p=1.0), Envelope),
    ],
    ids=repr,
)
def test_a_top_p_cut_alone_is_drawn_by_rejection(params: Any, kind: type) -> None:
    row = peaked(3000, 5)
    assert type(TokenSampler(params, 0, Workspace(3000)).distribution(row)) is kind
