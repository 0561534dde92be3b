"""Admission (llmd/engine/admission.py) on a fake backend, through the scheduler that drives it:
which waiting request goes next (round-robin across tenants, weighted) and which slots it gets
(the longest cached prefix, kept next to the running slots, evicting the least recently used)."""

from __future__ import annotations

from llmd.engine.messages import Admitted, GenerateRequest
from llmd.engine.scheduler import Scheduler
from llmd.sampling import resolve
from tests.unit.fake_backend import FakeBackend, request, run_to_end, text_of


def test_scheduler_admits_round_robin_across_tenants() -> None:
    """One tenant floods, another's single request is admitted at the next free slot."""
    backend = FakeBackend(parallel=2, batch_size=64, answer="x" * 100)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)

    def req(id_: str, tenant: str, weight: int = 1) -> GenerateRequest:
        return GenerateRequest(id_, "hello", resolve(max_tokens=8), tenant=tenant, weight=weight)

    for i in range(50):
        s.submit(req(f"a{i}", "flood"))
    for _ in range(3):
        s.step()
    s.submit(req("b", "single"))
    admitted_after: list[str] = []
    steps = 0
    while "b" not in admitted_after:
        admitted_after += [e.id for e in s.step() if isinstance(e, Admitted)]
        steps += 1
        assert steps <= 10, "the single request waits for at most one running request to end"
    assert admitted_after[0] == "b" or admitted_after.index("b") <= 1

    # Weights: with both tenants waiting, weight 2 gets two admissions per turn.
    s2 = Scheduler(FakeBackend(parallel=1, answer=""), ctx_per_seq=64, add_bos=False, bos=1)
    for i in range(6):
        s2.submit(req(f"h{i}", "heavy", weight=2))
        s2.submit(req(f"l{i}", "light"))
    order: list[str] = []
    for _ in range(200):
        order += [e.id[0] for e in s2.step() if isinstance(e, Admitted)]
    assert "".join(order[:9]) in ("hhlhhlhhl", "hlhhlhhlh")


def test_prefix_is_reused_from_a_finished_sequence() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=256, add_bos=False, bos=1)
    system = "S" * 80
    s.submit(request("one", system + "first question"))
    run_to_end(s)
    s.submit(request("two", system + "second question"))
    events = run_to_end(s)["two"]
    admitted = next(e for e in events if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(system)
    assert text_of(events) == "abc"


def test_prefix_is_copied_from_a_running_sequence() -> None:
    backend = FakeBackend(batch_size=128, answer="z" * 50)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    system = "S" * 80
    s.submit(request("one", system + "first", max_tokens=40))
    s.step()  # prompt done, "one" now decoding in its slot
    s.submit(request("two", system + "second", max_tokens=2))
    events = run_to_end(s)
    admitted = next(e for e in events["two"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(system)
    two_slot = next(
        slot for slot in s.slots if slot.cached[:86] == [ord(c) for c in system + "second"]
    )
    assert backend.kv[two_slot.id][0] == ord("S")


def test_short_common_prefix_is_copied_and_the_donor_keeps_its_history() -> None:
    s = Scheduler(FakeBackend(), ctx_per_seq=256, add_bos=False, bos=1)
    first = [ord(c) for c in "T" * 20 + "first question"]
    s.submit(request("one", "T" * 20 + "first question"))
    run_to_end(s)
    s.submit(request("two", "T" * 20 + "second question"))
    admitted = next(e for e in run_to_end(s)["two"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == 20  # a chat template's preamble, say
    assert any(slot.cached[: len(first)] == first for slot in s.slots)
    s.submit(request("three", "T" * 10 + "third question"))
    admitted = next(e for e in run_to_end(s)["three"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == 0  # too short to be worth a copy


def test_new_sequences_keep_running_slots_together() -> None:
    backend = FakeBackend(parallel=4, batch_size=256, answer="z" * 50)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    system = "S" * 80
    s.submit(request("a", "A" * 10, max_tokens=40))
    s.submit(request("b", "B" * 10, max_tokens=40))
    s.submit(request("c", "C" * 10, max_tokens=2))
    s.submit(request("conv", system + "first", max_tokens=2))
    for _ in range(8):
        s.step()
    assert [slot.seq is not None for slot in s.slots] == [True, True, False, False]
    assert s.slots[3].cached[:80] == [ord("S")] * 80  # the conversation's history, in slot 3
    # The conversation returns: its history is copied next to the running slots (slot 2)
    # instead of being decoded in slot 3, which would leave a gap at slot 2.
    s.submit(request("conv2", system + "second", max_tokens=2))
    admitted = next(e for e in s.step() if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(system)
    assert {seq for _, pos, seq, _ in backend.batches[-1] if pos >= 80} == {2}
    assert backend.kv[2][0] == ord("S")


def test_a_burst_of_new_prompts_does_not_wipe_a_returning_conversation() -> None:
    s = Scheduler(FakeBackend(parallel=4), ctx_per_seq=256, add_bos=False, bos=1)
    history = "H" * 70 + "first turn"
    s.submit(request("conv", history))
    run_to_end(s)  # the conversation's history is the least recently used cache now
    for i in range(3):
        s.submit(request(f"old{i}", chr(ord("p") + i) * 30))
    run_to_end(s)
    # Everything arrives at once, the returning conversation last: the new prompts, placed
    # first in arrival order, would take its slot (the least recently used) and wipe it.
    for i in range(3):
        s.submit(request(f"new{i}", chr(ord("u") + i) * 30))
    s.submit(request("conv2", history + "abc" + "second turn"))
    events = run_to_end(s)
    admitted = next(e for e in events["conv2"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == len(history) + 3
    assert all(text_of(events[f"new{i}"]) == "abc" for i in range(3))


def test_placing_side_by_side_still_evicts_the_least_recently_used_cache() -> None:
    backend = FakeBackend(parallel=3, answer="z" * 60)
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    s.submit(request("x", "X" * 70, max_tokens=3))
    run_to_end(s)  # slot 0: the older history
    s.submit(request("y", "Y" * 70, max_tokens=3))
    run_to_end(s)  # slot 1: the more recent one
    s.submit(request("a", "A" * 20, max_tokens=50))
    s.step()  # "a" runs in slot 2
    # "b" goes next to "a", into slot 1; y's history must survive it, x's is the one to go.
    s.submit(request("b", "B" * 20, max_tokens=50))
    s.step()
    assert s.slots[1].seq is not None and s.slots[1].seq.request.req.id == "b"
    s.cancel("a")
    s.cancel("b")
    s.step()
    s.submit(request("y2", "Y" * 70 + "zzz" + "next turn", max_tokens=1))
    admitted = next(e for e in run_to_end(s)["y2"] if isinstance(e, Admitted))
    assert admitted.cached_tokens == 72  # 70 + two z's: the last one sampled is never decoded
    s.submit(request("x2", "X" * 70 + "zzz" + "next turn", max_tokens=1))
    assert next(e for e in run_to_end(s)["x2"] if isinstance(e, Admitted)).cached_tokens == 0


def test_embedding_reuses_no_cached_prefix_but_leaves_its_own() -> None:
    backend = FakeBackend()
    s = Scheduler(backend, ctx_per_seq=256, add_bos=False, bos=1)
    text = "S" * 80
    s.submit(request("a", text + "?", max_tokens=1))
    run_to_end(s)
    s.submit(request("e", text + "!", embed=True))
    events = run_to_end(s)["e"]
    assert [e.cached_tokens for e in events if isinstance(e, Admitted)] == [0]
    # Every hidden state was computed: the whole input went through an embeddings step.
    read = sum(
        1 for b, e in zip(backend.batches, backend.embedding_steps, strict=True) if e for _ in b
    )
    assert read == 81
    s.submit(request("b", text + "! and more", max_tokens=1))
    assert [e.cached_tokens for e in run_to_end(s)["b"] if isinstance(e, Admitted)] == [81]
