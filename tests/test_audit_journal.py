"""The agent's side of the audit log: canonical entries written fast, and the journal."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fabric.audit import Entry, decode, encode
from fabric.policy import Decision, Outcome
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric._agent.durability import DurableGate
from fabric._agent.journal import Journal
from fabric._agent.recorder import Recorder, canonical_entry, now

text = st.text(max_size=20)
hexes = st.sampled_from(["", "00", "ab12", "ff" * 16])


@settings(max_examples=300)
@given(
    tenant=text,
    identity=text,
    kind=text.filter(bool),
    reasons=st.lists(text, max_size=3),
    rules=st.lists(text, max_size=3),
    objects=st.lists(hexes.filter(bool), max_size=3),
    task=hexes,
    inputs=hexes,
    node=text,
    parent=text,
)
def test_the_fast_encoding_is_the_canonical_one(**fields: object) -> None:
    values = {"id": "n/b/1", "time": now(), **fields}
    fast = canonical_entry(**values)  # type: ignore[arg-type]
    entry = Entry(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}  # type: ignore[arg-type]
    )
    assert fast == encode(entry)
    assert decode(fast) == entry


def test_a_recorded_decision_round_trips(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    recorder = Recorder("n1", journal)
    decision = Decision(Outcome.REFUSE, None, ("residency.inputs",), ("no",), "ab" * 32, "v1")
    first = recorder.record(decision, kind="place", tenant="alice", task="aa" * 16)
    second = recorder.record(decision, kind="place", tenant="alice", parent=first)
    journal.sync()
    entries = [decode(r) for r in journal.pending(10)[1]]
    assert [e.id for e in entries] == [first, second]
    assert entries[1].parent == first
    assert (entries[0].outcome, entries[0].rules, entries[0].node) == (
        "refuse",
        ("residency.inputs",),
        "n1",
    )


def test_a_torn_record_is_cut_and_acknowledged_records_are_not_sent_again(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path)
    for i in range(5):
        journal.append(f"record {i}".encode())
    journal.sync()
    journal.acknowledge(2)
    journal.close()
    with open(tmp_path / "audit.journal", "ab") as f:
        f.write(b"\x00\x00\x00\x50half a rec")  # a crash in the middle of a write
    reopened = Journal(tmp_path)
    start, records = reopened.pending(100)
    assert (start, records) == (2, [b"record 2", b"record 3", b"record 4"])
    reopened.append(b"record 5")
    reopened.sync()
    assert reopened.pending(100)[1][-1] == b"record 5"


def test_only_synced_records_are_forwarded_and_actions_wait_for_them(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        journal = Journal(tmp_path)
        gate = DurableGate(journal)
        done: list[str] = []
        journal.append(b"decision")
        assert journal.pending(10)[1] == []  # not durable yet: not forwarded either
        synced = asyncio.Event()
        gate.on_synced = synced.set
        gate.after_durable(lambda: done.append("acted"))
        assert done == []  # the action waits for the fsync
        await asyncio.wait_for(synced.wait(), timeout=10)
        assert journal.pending(10)[1] == [b"decision"]
        gate.after_durable(lambda: done.append("nothing new to wait for"))
        gate.close()
        return done

    assert asyncio.run(scenario()) == ["acted", "nothing new to wait for"]


@settings(max_examples=300)
@given(
    tenant=text,
    reasons=st.lists(text, max_size=3).map(tuple),
    rules=st.lists(text, max_size=3).map(tuple),
    objects=st.lists(hexes.filter(bool), max_size=3).map(tuple),
    seq=st.integers(min_value=-1, max_value=2**63 - 1),
    parent=text,
)
def test_the_sequencers_encoding_is_the_json_encoders(**fields: object) -> None:
    from fabric.audit._entry import _encode_generic

    entry = Entry(id="n/b/1", time=now(), kind="place", **fields)  # type: ignore[arg-type]
    assert encode(entry) == _encode_generic(entry)


def test_entry_times_are_the_audit_format_and_current() -> None:
    import datetime as dt

    from fabric.audit import entry_time

    before = entry_time()
    stamp = now()
    after = entry_time()
    assert before <= stamp <= after
    assert dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").year >= 2026


def test_acknowledged_records_leave_memory_and_compaction_keeps_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fabric._agent.journal as journal_module

    monkeypatch.setattr(journal_module, "COMPACT_AT", 1 << 30)
    journal = Journal(tmp_path)
    for i in range(10):
        journal.append(f"r{i}".encode())  # 60 bytes with their lengths
    journal.sync()
    journal.acknowledge(4)
    assert journal.pending(100) == (4, [f"r{i}".encode() for i in range(4, 10)])
    monkeypatch.setattr(journal_module, "COMPACT_AT", 50)
    journal.acknowledge(10)  # all acknowledged, file over the limit: a new file
    assert journal.pending(100) == (10, [])
    journal.append(b"r10")
    journal.sync()
    assert journal.pending(100) == (10, [b"r10"])
    journal.close()
    reopened = Journal(tmp_path)  # indexes restart, only the unacknowledged record is back
    assert reopened.pending(100) == (0, [b"r10"])
