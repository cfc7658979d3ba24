"""`decode` takes a fast path (a typed C decoder and a re-encoding) and falls back to the
reference checks only to name a problem: the two must agree on every input, accepted or not."""

from __future__ import annotations

import json

import pytest
from fabric.audit import Entry, EntryError, decode, encode
from fabric.audit._entry import _decode_canonical, _decode_strictly
from hypothesis import given, settings
from hypothesis import strategies as st

HEX = st.text(alphabet="0123456789abcdef", max_size=8)
TEXT = st.text(max_size=6)  # any code point, controls and non-ASCII included
TIME = st.sampled_from(
    ["2026-11-26T03:04:05.123456Z", "2024-02-29T23:59:59.999999Z", "2026-02-30T00:00:00.000000Z"]
)


@st.composite
def fields(draw: st.DrawFn) -> dict[str, object]:
    return {
        "id": draw(st.one_of(st.text(min_size=1, max_size=6), st.just(""))),
        "time": draw(TIME),
        "kind": draw(st.one_of(st.text(min_size=1, max_size=4), st.just(""))),
        "seq": draw(st.one_of(st.integers(-1, 3), st.sampled_from([-2, 2**63 - 1, 2**63]))),
        "tenant": draw(TEXT),
        "identity": draw(TEXT),
        "fingerprint": draw(st.one_of(st.just(""), st.just("ab" * 32), HEX)),
        "job": draw(st.one_of(HEX, st.just("job-1"))),
        "task": draw(HEX),
        "actor": draw(HEX),
        "objects": draw(st.lists(st.one_of(HEX, st.just("G")), max_size=2)),
        "function": draw(HEX),
        "outcome": draw(TEXT),
        "rules": draw(st.lists(TEXT, max_size=2)),
        "reasons": draw(st.lists(TEXT, max_size=2)),
        "inputs": draw(HEX),
        "policy": draw(TEXT),
        "node": draw(TEXT),
        "parent": draw(TEXT),
    }


def spellings(value: dict[str, object]) -> list[bytes]:
    """The canonical spelling and a few near misses of the same fields."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    out = [
        canonical.encode("utf-8", "surrogatepass"),
        json.dumps(value, sort_keys=True, separators=(", ", ":"), ensure_ascii=False).encode(),
        json.dumps(value, sort_keys=True, separators=(",", ":")).encode(),  # \u escapes
        json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(),  # key order
        canonical[:-1].encode() + b',"extra":""}',
        canonical.replace('"seq":', '"seq":1.0,"x":', 1).encode(),
        canonical.replace(f'"seq":{value["seq"]}', f'"seq":{value["seq"]}.0', 1).encode(),
        canonical.replace('"objects":[', '"objects":["00",', 1).encode(),
        b'{"id":"x",' + canonical[1:].encode(),  # a duplicate key
    ]
    return out


def verdict(data: bytes) -> Entry | str:
    try:
        return _decode_strictly(data)
    except (EntryError, TypeError) as error:
        return f"{type(error).__name__}"


@settings(max_examples=400, deadline=None)
@given(fields(), st.data())
def test_the_fast_path_accepts_exactly_what_the_reference_accepts(
    value: dict[str, object], data: st.DataObject
) -> None:
    for spelling in spellings(value):
        flipped = bytearray(spelling)
        at = data.draw(st.integers(0, len(flipped) - 1))
        flipped[at] ^= 1 << data.draw(st.integers(0, 7))
        for candidate in (spelling, bytes(flipped)):
            reference = verdict(candidate)
            fast = _decode_canonical(candidate)
            if isinstance(reference, Entry):
                assert fast is not None, candidate
                assert decode(candidate) == reference
            else:
                assert fast is None, candidate
                with pytest.raises(EntryError):
                    decode(candidate)


def test_a_decoded_entry_is_the_encoded_one() -> None:
    entry = Entry(
        id="n/1", time="2026-11-26T03:04:05.123456Z", kind="place", tenant="é\n", objects=("ab",)
    )
    assert decode(encode(entry)) == entry
    assert type(decode(encode(entry))) is Entry
