"""Speculative decoding's drafting half: which decoding sequences get draft tokens in a step,
how many (the cost model in speculate.py), and from where (n-gram lookup, or the model's draft
model). The scheduler puts the drafts into the step and verifies them (`Scheduler._verify`),
then reports each outcome here (`record`)."""

from __future__ import annotations

import time

from llmd.engine.draft_protocol import DraftAsk, Drafter
from llmd.engine.messages import SpeculativeOptions
from llmd.engine.ngram import NgramDrafter
from llmd.engine.sequence import Piece, RequestState, Sequence
from llmd.engine.speculate import FIRST_GUESS, Acceptance, StepCosts, plan_drafts


class Drafts:
    def __init__(
        self,
        options: SpeculativeOptions,
        model: Drafter | None,
        costs: StepCosts,
        ctx_per_seq: int,
        batch_size: int,
    ) -> None:
        self.options = options
        self.model_drafts = model is not None
        self.drafter: Drafter = model or NgramDrafter(options.ngram_min, options.ngram_max)
        self.costs = costs
        self.ctx_per_seq = ctx_per_seq
        self.batch_size = batch_size
        # The model's, across sequences: a new one's prior. Greedy and sampled requests apart:
        # a lookup is confirmed by a sampled token far less often than by the argmax (SmolLM2
        # free chat at temperature 1: 20-40% of first draft tokens), and a greedy copy's rate
        # would have a sampled chat draft where it loses.
        self.acceptance = {False: Acceptance(), True: Acceptance()}
        self.drafted = 0
        self.accepted = 0
        self.drafting = 0.0
        """Seconds a draft model takes per draft token, measured (decaying); 0 for lookups."""

    def add(self, pieces: list[Piece], running: list[RequestState]) -> None:
        """Add draft tokens to the decoding pieces where the cost model says they pay. Not
        while a prompt is being read: that step is long already, and a newcomer's first
        token should not wait for drafts."""
        if not self.options.enabled or not pieces:
            return
        for piece in pieces:
            seq = piece.samplers[0]
            if seq.shadow is not None:  # last step's lookup, not checked: was it right?
                self._shadowed(seq, seq.shadow == seq.pending)
                seq.shadow = None
        if any(state.is_prefilling for state in running):
            return
        room = self.batch_size - len(pieces)
        limits: list[int] = []
        for piece in pieces:
            seq = piece.samplers[0]
            state = seq.request
            limit = 0
            if state.req.speculative:
                # This step yields up to 1 + k tokens, all within max_tokens and the context.
                left = state.max_tokens - seq.generated - 1
                cells = self.ctx_per_seq - len(seq.slot.cached) - 1
                limit = max(0, min(self.options.max_draft, left, cells))
            limits.append(limit)
            seq.acceptance.idle()
        if not any(limits):
            return
        if not self.options.adaptive:  # every draft found, as long as the limits allow
            proposals = self._propose(pieces, limits)
            ks = [len(p) for p in proposals]
        else:
            proposals, ks = self._plan(pieces, limits)
            if not self.model_drafts:
                # A lookup made but not checked is judged against the token that comes:
                # acceptance stays measured at no cost while a sequence does not draft, so
                # it starts again as soon as its text turns to copying (a quote, a loop).
                for piece, proposal, k in zip(pieces, proposals, ks, strict=True):
                    if proposal and not k:
                        piece.samplers[0].shadow = proposal[0]
            if not any(ks):
                return
        added = 0
        for piece, proposal, k in zip(pieces, proposals, ks, strict=True):
            draft = proposal[: min(k, room - added)]
            if not draft:
                continue
            _, pos, slot, _ = piece.chunk[0]
            piece.chunk.extend((tok, pos + 1 + j, slot, True) for j, tok in enumerate(draft))
            piece.draft = draft
            added += len(draft)

    def _plan(self, pieces: list[Piece], limits: list[int]) -> tuple[list[list[int]], list[int]]:
        """Each piece's draft and how much of it to check, by the cost model."""
        priors = {
            kind: acceptance.alpha(FIRST_GUESS) for kind, acceptance in self.acceptance.items()
        }
        alphas = [
            piece.samplers[0].acceptance.alpha(priors[_sampled(piece.samplers[0])])
            for piece in pieces
        ]
        proposals: list[list[int]] = [[] for _ in pieces]
        if not self.model_drafts:  # lookups are nearly free: see what each could draft first
            proposals = self._propose(pieces, limits)
            limits = [len(p) for p in proposals]
        # A draft model's cost fades between measurements: one slow call (a long prompt to
        # catch up on) must not stop drafting for good.
        self.drafting *= 0.98
        slots = [piece.slot for piece in pieces]
        ks = plan_drafts(alphas, limits, self.costs, self.drafting, slots)
        if self.model_drafts:  # a draft model's tokens cost its steps: only those planned
            proposals = self._propose(pieces, ks)
        return proposals, ks

    def _propose(self, pieces: list[Piece], ks: list[int]) -> list[list[int]]:
        asks, where = [], []
        for i, (piece, k) in enumerate(zip(pieces, ks, strict=True)):
            if k > 0:
                seq = piece.samplers[0]
                assert seq.pending is not None
                tokens = [*seq.slot.cached, seq.pending]
                asks.append(DraftAsk(seq.slot.id, tokens, k, seq.request.req.tenant))
                where.append(i)
        proposals: list[list[int]] = [[] for _ in pieces]
        started = time.perf_counter()
        drafts = self.drafter.propose(asks) if asks else []
        if self.model_drafts and asks:
            per_token = (time.perf_counter() - started) / max(1, sum(ks[i] for i in where))
            self.drafting = (
                per_token if not self.drafting else 0.8 * self.drafting + 0.2 * per_token
            )
        for i, draft in zip(where, drafts, strict=True):
            proposals[i] = list(draft[: ks[i]])
        return proposals

    def remember(self, seq: Sequence) -> None:
        """The sequence ended: its answer joins its key's recent answers (n-gram lookup)."""
        if isinstance(self.drafter, NgramDrafter) and self.options.enabled:
            state = seq.request
            self.drafter.remember(state.req.tenant, seq.slot.cached[len(state.prompt) :])

    def _shadowed(self, seq: Sequence, right: bool) -> None:
        seq.acceptance.record_first(right)
        self.acceptance[_sampled(seq)].record_first(right)

    def record(
        self, seq: Sequence, drafted: int, accepted: int, rejected: bool, learn: bool = True
    ) -> None:
        """One verification: `accepted` of `drafted` confirmed, and whether one was refused
        (else the sequence ended, or every draft token held). Not `learn`: a guess that only
        evened a step's rows (llmd/engine/invariance.py), counted but no measure of how well
        the sequence's lookups do."""
        self.drafted += drafted
        self.accepted += accepted
        if not learn:
            return
        seq.acceptance.record(accepted, rejected)
        self.acceptance[_sampled(seq)].record(accepted, rejected)


def _sampled(seq: Sequence) -> bool:
    """Whether the sequence draws its tokens (else it takes the argmax)."""
    return seq.request.req.sampling.temperature > 0.0
