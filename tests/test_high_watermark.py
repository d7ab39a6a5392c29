"""The watermark rules, property-tested: no event exported twice, none lost inside the look-back window."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atlas_log.high_watermark import (
    Checkpoint,
    EventKey,
    ScopeState,
    Watermark,
    advance,
    is_new,
    new_events,
    query_start_s,
)


@dataclass(frozen=True)
class FeedEvent:
    key: EventKey
    visible_at: int  # when Atlas starts showing it; later than created for a late-visible event


T0 = 1_700_000_000


@st.composite
def feeds(draw: st.DrawFn) -> tuple[list[FeedEvent], list[int], int]:
    """Events crowded into few seconds (many ids per second), some visible late, and the cycle times."""
    lookback = draw(st.sampled_from([0, 5, 30]))
    n = draw(st.integers(0, 60))
    events = []
    for i in range(n):
        created = T0 + draw(st.integers(0, 40))
        delay = draw(st.one_of(st.just(0), st.integers(0, lookback + 10)))
        events.append(FeedEvent(EventKey(f"{i:024x}", created), created + delay))
    cycles = sorted(set(draw(st.lists(st.integers(0, 60), min_size=1, max_size=8))))
    return events, [T0 + c for c in cycles], lookback


def run_cycles(events: list[FeedEvent], cycle_times: list[int], lookback: int, *, split: int = 0) -> list[str]:
    """Drive the watermark as the exporter does; return the ids in the order they were exported."""
    wm = Watermark()
    exported: list[str] = []
    for now in [*cycle_times, T0 + 10_000]:  # a final catch-up long after everything is visible
        start = query_start_s(wm, lookback_s=lookback, since_s=T0)
        window = [e.key for e in events if e.visible_at <= now and start <= e.key.created_s <= now]
        fresh = new_events(wm, reversed(window), lookback_s=lookback)  # Atlas order: newest first
        if split and len(fresh) > split:  # committed in two parts, as a large cycle is
            wm = advance(wm, fresh[:split], lookback_s=lookback)
            fresh_rest = [k for k in fresh[split:] if is_new(wm, k, lookback_s=lookback)]
            exported += [k.id for k in fresh[:split]]
            fresh = fresh_rest
        exported += [k.id for k in fresh]
        wm = advance(wm, fresh, lookback_s=lookback, read_until_s=now)
    return exported


@settings(max_examples=400, deadline=None)
@given(feeds(), st.sampled_from([0, 1, 3]))
def test_every_event_visible_within_lookback_is_exported_exactly_once(
    feed: tuple[list[FeedEvent], list[int], int], split: int
) -> None:
    events, cycle_times, lookback = feed
    exported = run_cycles(events, cycle_times, lookback, split=split)
    assert len(exported) == len(set(exported)), "an event was exported twice"
    must = {e.key.id for e in events if e.visible_at - e.key.created_s <= lookback}
    # Events seen by no cycle before the watermark passed them by more than the look-back may be lost; every
    # event that became visible within the look-back is there.
    assert must <= set(exported)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), max_size=80))
def test_new_events_dedupes_and_sorts_out_of_order_input(pairs: list[tuple[int, int]]) -> None:
    keys = [EventKey(f"{i:024x}", T0 + c) for c, i in pairs]
    out = new_events(Watermark(), keys, lookback_s=0)
    assert len({k.id for k in out}) == len(out) == len({k.id for k in keys})
    assert out == sorted(out, key=lambda k: (k.created_s, k.id))


def test_many_ids_in_one_second_are_told_apart_by_last_ids() -> None:
    first = [EventKey(f"{i:024x}", T0) for i in range(700)]
    wm = advance(Watermark(), first[:500], lookback_s=0)
    assert wm.min_date_s == T0 and len(wm.last_ids) == 500
    assert new_events(wm, first, lookback_s=0) == sorted(first[500:], key=lambda k: k.id)


def test_read_until_moves_a_quiet_scope_and_prunes_the_lookback_set() -> None:
    wm = advance(Watermark(), [EventKey("a" * 24, T0)], lookback_s=10)
    wm = advance(wm, [], lookback_s=10, read_until_s=T0 + 100)
    assert wm.min_date_s == T0 + 100
    assert wm.recent == {}  # the old id fell out of the window
    assert not is_new(wm, EventKey("a" * 24, T0), lookback_s=10)  # older than the window: never again


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 9)), max_size=30))
def test_watermark_json_round_trip(pairs: list[tuple[int, int]]) -> None:
    wm = advance(Watermark(), [EventKey(f"{i:024x}", T0 + c) for c, i in pairs], lookback_s=20)
    again = Watermark.from_json(wm.to_json())
    assert again == wm
    assert again.last_ids == wm.last_ids


def test_checkpoint_round_trip_and_rejects_a_watermark_in_the_future() -> None:
    cp = Checkpoint(seq=3)
    cp.scopes["project:" + "b" * 24] = ScopeState(
        kind="project", id="b" * 24, name="p", org_id="a" * 24, watermark=Watermark(min_date_s=T0)
    )
    data = cp.to_json()
    assert Checkpoint.from_json(data, now_s=T0).to_json() == data
    with pytest.raises(ValueError, match="in the future"):
        Checkpoint.from_json(data, now_s=T0 - 86_400)
