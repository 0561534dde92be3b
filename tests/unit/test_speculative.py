"""Speculative decoding in the engine step (llmd/engine/scheduler.py, ngram.py, speculate.py) on
the fake backend: drafts go into the step after the sequence's token, the output is the same as
one token a step, refused drafts leave no cells, and the cost model drafts only where it pays.
The real model's proof is tests/e2e/test_speculative.py."""

from __future__ import annotations

from typing import Any

from llmd.engine.draft_protocol import DraftAsk
from llmd.engine.messages import Delta, GenerateRequest, SpeculativeOptions
from llmd.engine.ngram import RECENT_TOKENS, NgramDrafter
from llmd.engine.scheduler import Scheduler
from llmd.engine.speculate import Acceptance, StepCosts, micro_batches, plan_drafts
from llmd.sampling import resolve
from tests.unit.fake_backend import FakeBackend, request, run_to_end, text_of

ON = SpeculativeOptions(enabled=True, max_draft=8, adaptive=True, ngram_min=1, ngram_max=3)


class Free(StepCosts):
    """A draft token costs nothing (whatever the fake's steps take): draft whenever one is
    proposed."""

    def __init__(self) -> None:
        super().__init__(0.010, 0.0)

    def observe(self, n: int, seconds: float, ubatches: int = 1) -> None:
        pass


def scheduler(backend: FakeBackend, spec: SpeculativeOptions | None = ON) -> Scheduler:
    return Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1, speculative=spec, costs=Free())


def cells_match(s: Scheduler, b: FakeBackend) -> None:
    for slot in s.slots:
        assert [b.kv[slot.id][p] for p in sorted(b.kv[slot.id])] == slot.cached


def test_the_ngram_drafter_proposes_what_followed_the_latest_match_longest_first() -> None:
    d = NgramDrafter(1, 3)
    tokens = [1, 2, 3, 9, 2, 3, 4, 5, 1, 2, 3]
    # "1 2 3" occurred at the start, followed by 9; "2 3" last before by 4 5: longest wins.
    assert d.propose([DraftAsk(0, tokens, 3)]) == [[9, 2, 3]]
    assert d.propose([DraftAsk(0, [*tokens, 9], 2)]) == [[2, 3]]
    assert d.propose([DraftAsk(0, [7, 8], 4)]) == [[]]  # another sequence: rebuilt, no match
    assert d.propose([DraftAsk(1, [5, 6, 5], 4)]) == [[6, 5, 6, 5]]  # slots apart; a repeat
    # goes on around its period


def test_a_draft_stops_where_two_matches_as_long_part() -> None:
    """Where the text before has gone on in two ways after the same tokens (a JSON key with
    a new value in each object, a common phrase in prose), the draft holds only what both
    agree on: past it, a guess is likelier wrong than right, and a refused draft token costs
    the step's time for nothing. One match, or matches that agree, draft in full."""
    d = NgramDrafter(2, 3)
    d.agree_min = 3  # this test's matches are short; real ones must be AGREE_MIN long
    parted = [7, 1, 2, 3, 4, 9, 9, 7, 1, 2, 3, 5, 8, 8, 7, 1, 2]
    assert d.propose([DraftAsk(0, parted, 4)]) == [[3]]  # 3 5 8 8 and 3 4 9 9: only 3
    agreed = [7, 1, 2, 3, 4, 9, 9, 7, 1, 2, 3, 4, 9, 9, 7, 1, 2]
    assert d.propose([DraftAsk(1, agreed, 4)]) == [[3, 4, 9, 9]]
    # A longer match outranks both: "6 7 1 2" once, so it drafts what followed it in full.
    longer = [6, 7, 1, 2, 3, 4, 9, 7, 1, 2, 3, 5, 8, 6, 7, 1, 2]
    d4 = NgramDrafter(2, 4)
    d4.agree_min = 3
    assert d4.propose([DraftAsk(2, longer, 3)]) == [[3, 4, 9]]
    # A loop: the latest match is a period back and its draft goes on around the period;
    # the one before agrees as far as it runs, so the draft stays whole.
    loop = [5, 6, 8, 7, 1, 2, 7, 1, 2, 7, 1, 2]
    assert d.propose([DraftAsk(4, loop, 8)]) == [[7, 1, 2, 7, 1, 2, 7, 1]]
    parted_first = [7, 1, 2, 4, 7, 1, 2, 5, 7, 1, 2]
    assert d.propose([DraftAsk(3, parted_first, 4)]) == [[]]  # no pool lookup in its place
    # Under the floor the latest match drafts alone (early in a quote, a common phrase).
    assert NgramDrafter(2, 3).propose([DraftAsk(0, parted, 4)]) == [[3, 5, 8, 8]]


def test_drafts_ride_in_the_step_and_the_output_is_unchanged() -> None:
    prompt, answer = "say: the cat sat on the mat", "the cat sat on the mat"
    plain = FakeBackend(answer=answer)
    s0 = scheduler(plain, spec=None)
    s0.submit(request("a", prompt))
    expected = run_to_end(s0)["a"]

    b = FakeBackend(answer=answer)
    s = scheduler(b)
    s.submit(request("a", prompt))
    events: list[Any] = []
    while s.has_work():
        events += s.step()
        cells_match(s, b)
    assert text_of(events) == text_of(expected) == answer
    assert [e.finish_reason for e in events if isinstance(e, Delta)][-1] == "stop"
    stats = s.stats()
    assert stats.accepted > 10 and stats.drafted >= stats.accepted
    assert len(b.batches) < len(plain.batches) / 2  # several tokens a step
    assert any(len(batch) > 1 for batch in b.batches[1:])


def test_refused_drafts_leave_no_cells_and_count_as_drafted() -> None:
    # The prompt suggests "bcd..." after "a", the model writes "abxy...".
    b = FakeBackend(answer="abxyzw")
    s = scheduler(b)
    s.submit(request("a", "abcdefg then "))
    events: list[Any] = []
    while s.has_work():
        events += s.step()
        cells_match(s, b)
    assert text_of(events) == "abxyzw"
    stats = s.stats()
    assert stats.drafted > stats.accepted


def test_max_tokens_and_stop_strings_cut_inside_a_draft() -> None:
    answer = "the cat sat on the mat"
    b = FakeBackend(answer=answer)
    s = scheduler(b)
    s.submit(request("a", "say: " + answer, max_tokens=9))
    events = run_to_end(s)["a"]
    assert text_of(events) == answer[:9]
    assert sum(e.tokens for e in events if isinstance(e, Delta)) == 9
    cells_match(s, b)
    b2 = FakeBackend(answer=answer)
    s2 = scheduler(b2)
    s2.submit(request("b", "say: " + answer, stop=["on"]))
    events = run_to_end(s2)["b"]
    assert text_of(events) == "the cat sat "
    cells_match(s2, b2)


def test_a_cancelled_speculating_request_keeps_only_its_confirmed_cells() -> None:
    answer = "the cat sat on the mat and the cat sat on the mat"
    b = FakeBackend(answer=answer)
    s = scheduler(b)
    s.submit(request("a", "say: " + answer))
    for _ in range(4):
        s.step()
    assert s.stats().drafted > 0
    s.cancel("a")
    s.step()
    assert not s.has_work()
    cells_match(s, b)


def test_opted_out_requests_and_disabled_engines_never_draft() -> None:
    answer = "the cat sat on the mat"
    for spec, opt in ((ON, False), (SpeculativeOptions(enabled=False), True)):
        b = FakeBackend(answer=answer)
        s = scheduler(b, spec)
        s.submit(request("a", "say: " + answer, speculative=opt))
        assert text_of(run_to_end(s)["a"]) == answer
        assert s.stats().drafted == 0
        assert all(len(batch) == 1 for batch in b.batches[1:])


def test_the_cost_model_drafts_for_one_stream_and_not_for_a_full_batch() -> None:
    costs = StepCosts(0.012, 0.004)  # one decode token 16 ms, each further token 4 ms
    a, b = costs.line()
    assert abs(a - 0.012) < 1e-9 and abs(b - 0.004) < 1e-9
    # Alone: 0.8 per token pays for 3 (a 4th gains 0.41 token for 4 ms of a 28 ms step
    # making 2.95 tokens: 0.41/4 < 2.95/28); a nearly sure drafter uses all 8.
    assert plan_drafts([(0.8, 0.8)], [8], costs) == [3]
    assert plan_drafts([(0.98, 0.98)], [8], costs) == [8]
    assert plan_drafts([(0.2, 0.9)], [8], costs) == [0]  # worse than the bar b*N/T = 0.25
    assert plan_drafts([(0.8, 0.8)] * 16, [8] * 16, costs) == [0] * 16  # the step is long
    # Copying: the first token is a coin toss, but once one holds the next nearly always
    # does, so a deep draft pays where the same average rate would stop after one.
    assert plan_drafts([(0.5, 0.97)], [8], costs) == [8]
    assert plan_drafts([(0.5, 0.5)], [8], costs) == [1]
    # Only the sequences that could draft are planned; the rest still count in the step.
    assert plan_drafts([(0.9, 0.9), (0.9, 0.9)], [0, 8], costs)[0] == 0


def test_the_cost_line_follows_measured_steps() -> None:
    costs = StepCosts(0.012, 0.004)
    for _ in range(2000):  # the machine turned out slower per token
        for n in (1, 4, 9):
            costs.observe(n, 0.010 + 0.010 * n)
    a, b = costs.line()
    assert abs(a - 0.010) < 1e-3 and abs(b - 0.010) < 1e-3


def test_the_cost_line_moves_with_a_one_token_steps_time() -> None:
    """The context grew (or the box got busier): one-token steps take twice as long, and a
    step of 2, never measured since the probe, is priced at twice the probe's too."""
    costs = StepCosts(0.012, 0.004)  # T(1) 16 ms, T(2) 20 ms
    for _ in range(200):
        costs.observe(1, 0.032)
    assert abs(costs.time(1) - 0.032) < 1e-4
    assert abs(costs.time(2) - 0.040) < 1e-3


def test_a_single_streams_measured_steps_outweigh_the_probe_soon_and_fade_back_to_it() -> None:
    """SmolLM2 on the 2-core box: the probe at load put a step of 2 at 1.1 T(1), steps of 2
    while answering took 1.3 T(1). A first draft token confirmed one time in five then pays
    by the probe, and no longer once a few such steps are measured; a few hundred one-token
    steps later (no drafts) the probe's line is back and the next draft measures again."""
    costs = StepCosts(0.0014, 0.0048, single=0.010)  # T(2) 11 ms, T(9) 44.6 ms
    guess = (0.2, 0.5)
    assert plan_drafts([guess], [8], costs) == [1]
    for _ in range(4):
        costs.observe(2, 0.013)
        for _ in range(20):
            costs.observe(1, 0.010)
    assert costs.time(2) > 0.012
    assert plan_drafts([guess], [8], costs) == [0]
    for _ in range(3000):
        costs.observe(1, 0.010)
    assert abs(costs.time(2) - 0.011) < 2e-4
    assert plan_drafts([guess], [8], costs) == [1]


def test_micro_batches_follow_llama_cpps_equal_split_over_consecutive_slots() -> None:
    # One KV stream per slot: a micro-batch is a run of consecutive slots with tokens left,
    # each giving as many as the one with the fewest.
    assert micro_batches([(0, 1), (1, 1), (2, 1)]) == [3]
    assert micro_batches([(0, 1), (1, 1), (2, 9), (3, 1)]) == [4, 8]
    assert micro_batches([(0, 9), (1, 5)]) == [10, 4]
    assert micro_batches([(0, 4), (1, 4), (2, 4)]) == [12]
    assert micro_batches([(0, 1), (2, 1), (3, 3)]) == [1, 2, 2]  # slot 1 is idle: a gap
    assert micro_batches([(5, 2)]) == [2]


def test_the_cost_model_cuts_steps_at_the_models_micro_batch_size() -> None:
    # batch_invariant with flash attention keeps micro-batches under 64 rows: a step of 16
    # streams drafting 4 tokens each (80 rows) is two passes over the weights, not one.
    steps = [(slot, 5) for slot in range(16)]
    assert StepCosts(0.012, 0.004).micro_batches(steps) == [80]
    assert StepCosts(0.012, 0.004, n_ubatch=63).micro_batches(steps) == [48, 32]
    # So drafts that cross the line are priced dearer, and a plan takes fewer of them.
    alphas, limits = [(0.6, 0.6)] * 16, [4] * 16
    wide = plan_drafts(alphas, limits, StepCosts(0.030, 0.002))
    narrow = plan_drafts(alphas, limits, StepCosts(0.030, 0.002, n_ubatch=16))
    assert sum(narrow) < sum(wide)


def test_the_cost_fit_tells_a_micro_batchs_cost_from_a_tokens() -> None:
    costs = StepCosts(0.012, 0.004)
    for _ in range(500):
        for n, u in ((2, 1), (16, 1), (17, 2), (24, 2), (30, 3)):
            costs.observe(n, 0.030 * u + 0.005 * n, u)
    a, b = costs.line()
    assert abs(a - 0.030) < 1e-3 and abs(b - 0.005) < 1e-4
    assert abs(costs.time(24, 2) - 0.180) < 1e-3


def test_drafts_that_would_split_a_batch_pay_for_the_extra_micro_batch() -> None:
    """16 streams in slots 0-15, 40 ms a micro-batch and 5 ms a token: the step is 120 ms for
    16 tokens. One stream copying with 95% confidence would add a micro-batch of its own
    (8 drafts: 80 ms for ~6.6 tokens): not worth it, though each of its tokens alone (5 ms
    for 0.95) is. When every stream copies, the same depth for all keeps one micro-batch."""
    costs = StepCosts(0.040, 0.005)
    sure = (0.95, 0.95)
    one = plan_drafts([sure] * 16, [8] + [0] * 15, costs, slots=list(range(16)))
    assert one == [0] * 16
    every = plan_drafts([sure] * 16, [8] * 16, costs, slots=list(range(16)))
    assert len(set(every)) == 1 and every[0] > 0
    # Two streams, both copying, with drafts of 8 and 3 found: one depth keeps the step whole
    # (3 each: 8 tokens in one micro-batch beat 3 + 8 in two, 2 + 4.5 expected tokens).
    costs = StepCosts(0.040, 0.001)
    assert plan_drafts([sure, sure], [8, 3], costs, slots=[4, 5]) == [3, 3]
    # Not neighbours: they are two micro-batches whatever they draft, so each takes its all.
    assert plan_drafts([sure, sure], [8, 3], costs, slots=[4, 9]) == [8, 3]


def test_acceptance_fades_back_to_the_prior_when_a_sequence_stops_drafting() -> None:
    acc = Acceptance()
    for _ in range(5):
        acc.record(0, True)
    assert acc.alpha((0.5, 0.5))[0] < 0.25
    for _ in range(30):
        acc.idle()
    assert acc.alpha((0.5, 0.5))[0] > 0.45


def test_acceptance_tells_the_first_draft_token_from_the_ones_after_it() -> None:
    acc = Acceptance()
    for _ in range(10):
        acc.record(0, True)  # refused at once
        acc.record(8, False)  # a whole copied run
    first, then = acc.alpha((0.8, 0.8))
    assert 0.4 < first < 0.6 and then > 0.95


def test_without_adaptation_every_draft_found_is_checked() -> None:
    class Dear(StepCosts):
        """A draft token costs ten times a step: the cost model never drafts."""

        def __init__(self) -> None:
            super().__init__(0.010, 0.100, single=0.011)

        def observe(self, n: int, seconds: float, ubatches: int = 1) -> None:
            pass

    answer = "the cat sat on the mat"
    for adaptive, drafts in ((True, False), (False, True)):
        b = FakeBackend(answer=answer)
        spec = SpeculativeOptions(True, 8, adaptive, 1, 3)
        s = Scheduler(b, 256, add_bos=False, bos=1, speculative=spec, costs=Dear())
        s.submit(request("a", "say: " + answer))
        assert text_of(run_to_end(s)["a"]) == answer
        assert (s.stats().drafted > 0) == drafts


def test_a_keys_recent_answers_draft_where_its_own_tokens_have_no_match() -> None:
    d = NgramDrafter(2, 3)
    d.remember("alice", [10, 11, 12, 13, 14])
    d.remember("alice", [20, 21, 22])
    asks = [DraftAsk(0, [1, 2, 11, 12], 4, "alice"), DraftAsk(1, [1, 2, 11, 12], 4, "bob")]
    # Alice's earlier answer goes on 13 14, and stops where that answer ended; Bob's pool is
    # his own (empty): another key's answers are never looked at.
    assert d.propose(asks) == [[13, 14], []]
    assert d.propose([DraftAsk(2, [5, 20, 21], 4, "alice")]) == [[22]]


def test_lookups_walk_the_chain_to_the_longest_match_and_stop_at_answer_edges() -> None:
    d = NgramDrafter(2, 4)
    # "1 2" is followed by 3 three times; the earliest occurrence matches 4 tokens back
    # (5 6 1 2), the later ones only 2 or 3: the longest wins over the latest.
    tokens = [5, 6, 1, 2, 3, 7, 9, 1, 2, 3, 8, 6, 1, 2, 3, 4, 0, 5, 6, 1, 2]
    assert d.propose([DraftAsk(0, tokens, 3)]) == [[3, 7, 9]]
    # A pool much longer than the asking sequence: a match is measured only as far back as
    # the sequence goes (never wrapping around to its end), and never across two answers.
    d.remember("alice", [*range(100, 140), 1, 2, 50, 51])
    d.remember("alice", [60, 2, 52])
    assert d.propose([DraftAsk(1, [2], 3, "alice")]) == [[]]  # shorter than ngram_min
    assert d.propose([DraftAsk(1, [1, 2], 3, "alice")]) == [[50, 51]]
    assert d.propose([DraftAsk(1, [60, 2], 3, "alice")]) == [[52]]


def test_a_full_pool_keeps_its_latest_half_and_still_finds_them() -> None:
    d = NgramDrafter(2, 4)
    for i in range(0, RECENT_TOKENS, 100):
        d.remember("k", [*range(1000 + i, 1100 + i)])
    held = d._recent["k"].tokens
    last = 1000 + range(0, RECENT_TOKENS, 100)[-1] + 99
    assert RECENT_TOKENS // 2 <= len(held) <= RECENT_TOKENS and held[-1] == last
    assert d.propose([DraftAsk(0, [last - 3, last - 2], 2, "k")]) == [[last - 1, last]]
    assert d.propose([DraftAsk(0, [1000, 1001], 2, "k")]) == [[]]  # the older half went


def test_finished_answers_join_their_keys_pool_through_the_scheduler() -> None:
    answer = "xyzw"
    b = FakeBackend(answer=answer)
    s = scheduler(b)
    s.submit(request("a", "q1:", tenant="alice"))
    assert text_of(run_to_end(s)["a"]) == answer
    assert s.stats().drafted == 0  # nothing to copy from: the prompt holds no "xyzw"
    s.submit(request("b", "q2:", tenant="alice"))
    assert text_of(run_to_end(s)["b"]) == answer
    assert s.stats().accepted >= 2  # the second answer drafted from the first


def test_a_draft_models_cost_per_token_counts_against_its_drafts() -> None:
    costs = StepCosts(0.012, 0.004)
    assert plan_drafts([(0.9, 0.9)], [8], costs) != [0]
    # Each draft token takes a draft-model step as long as a main step: not worth it alone.
    assert plan_drafts([(0.9, 0.9)], [8], costs, drafting=0.016) == [0]


def test_a_sequence_that_stopped_drafting_starts_again_when_its_text_turns_to_copying() -> None:
    """Lookups not put into a step are judged against the token that came, so acceptance is
    measured while a sequence does not draft: after a run of misses it drafts again once the
    lookups come right (here: the answer starts repeating itself)."""
    answer = "qwertyuiopasdfgh" + "zxcvb" * 8
    b = FakeBackend(answer=answer)
    costs = StepCosts(0.012, 0.004)  # a real bar: alpha must beat ~0.25 to draft
    costs.observe = lambda n, seconds, ubatches=1: None  # type: ignore[method-assign]
    spec = SpeculativeOptions(True, 8, True, 1, 3)
    s = Scheduler(b, 256, add_bos=False, bos=1, speculative=spec, costs=costs)
    s.drafts.acceptance[True].first_seen = 50.0  # the model's drafts have been poor lately
    s.submit(request("a", "q: abcdefghijklmnop"))
    assert text_of(run_to_end(s)["a"]) == answer
    assert s.stats().accepted > 10


def test_greedy_and_sampled_requests_keep_apart_rates_as_a_new_sequences_prior() -> None:
    """The model's greedy requests copy well (their drafts nearly always confirmed), its
    sampled ones do not: a new sampled sequence starts from the sampled rate and does not
    draft at first, a new greedy one does."""
    answer = "the cat sat on the mat"
    for temperature, drafts in ((1.0, False), (0.0, True)):
        b = FakeBackend(answer=answer)
        costs = StepCosts(0.012, 0.004)  # a real bar: alpha must beat ~0.25 to draft
        costs.observe = lambda n, seconds, ubatches=1: None  # type: ignore[method-assign]
        s = Scheduler(b, 256, add_bos=False, bos=1, speculative=ON, costs=costs)
        s.drafts.acceptance[False] = Acceptance(1000.0, 1000.0, 1000.0, 1000.0)
        s.drafts.acceptance[True] = Acceptance(50.0, 1000.0, 50.0, 1000.0)
        sampling = resolve(temperature=temperature, max_tokens=8)
        s.submit(GenerateRequest("a", "say: " + answer, sampling))
        s.step()  # the prompt, and the first token
        s.step()  # the first step that could draft
        assert (s.stats().drafted > 0) == drafts


def test_a_single_streams_first_draft_token_pays_for_the_switch_to_the_prompt_threads() -> None:
    """The shape measured for SmolLM2 on the 2-core box (bench/spec_steps.py): 24 ms for one
    token, then about 45 + 7.5 ms per token on the prompt threads. One or two drafts never
    pay that jump; a long confirmed copy does."""
    costs = StepCosts(0.045, 0.0075, single=0.024)
    assert costs.time(1) == 0.024 and abs(costs.time(2) - 0.060) < 1e-9
    assert plan_drafts([(0.7, 0.7)], [8], costs) == [0]
    assert plan_drafts([(0.6, 0.97)], [8], costs) == [8]
    # With two streams every step is on the prompt threads already: drafts are judged by b.
    assert plan_drafts([(0.7, 0.7), (0.7, 0.7)], [8, 8], costs) != [0, 0]
