"""Audit log entries and their one canonical encoding.

An :class:`Entry` records one decision or event with its provenance: who asked (tenant,
certificate identity and fingerprint), about what (job, task, actor, objects, function), what
was decided (outcome), why (rule ids and reasons), on which inputs (their digest), under which
policy version, by which node, and what it follows from (the parent entry's id).

The Merkle tree commits to bytes, so an entry must have exactly one byte spelling. That is
:func:`encode`: JSON with sorted keys, no whitespace, UTF-8 (``ensure_ascii=False``), tuples as
lists, and no floats anywhere. :func:`decode` accepts only that spelling: unknown or missing
keys, wrong types, and any input that does not re-encode to the identical bytes are errors.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from ._errors import EntryError

if TYPE_CHECKING:
    from fabric.policy import Decision

_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z", re.ASCII)
_HEX = re.compile(r"[0-9a-f]*", re.ASCII)
_MAX_SEQ = 2**63 - 1  # a SQL BIGINT
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, kw_only=True, slots=True)
class Entry:
    """One record of the audit log. Construction checks every field (see :func:`decode`)."""

    id: str
    """Globally unique, chosen by the recorder (e.g. ``"<node>/<boot>/<counter>"``): the
    idempotency key when entries are forwarded to the sequencer."""
    time: str
    """RFC 3339 in UTC with microseconds, e.g. ``"2026-11-26T03:04:05.123456Z"``: one fixed
    width, so that times compare as strings."""
    kind: str
    """What happened: ``"admit"``, ``"place"``, ``"transfer"``, ``"budget.kill"``, ..."""
    seq: int = -1
    """The position in the log, assigned by the sequencer; -1 before."""
    tenant: str = ""
    identity: str = ""
    """The caller's certificate identity (a URI such as ``spiffe://fabric/tenant/acme``)."""
    fingerprint: str = ""
    """Hex SHA-256 of the caller's certificate, or ""."""
    job: str = ""
    task: str = ""
    actor: str = ""
    objects: tuple[str, ...] = ()
    function: str = ""
    """The hex digest of the function definition, or ""."""
    outcome: str = ""
    rules: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    inputs: str = ""
    """The hex digest of the decision's inputs."""
    policy: str = ""
    """The version of the policy the decision was taken under."""
    node: str = ""
    """The node that took the decision."""
    parent: str = ""
    """The id of the entry this one follows from (a nested task's admission names an entry of
    its parent task), or ""."""

    def __post_init__(self) -> None:
        # Every entry the log appends or reads passes here: the common case (plain ASCII
        # str) is tested inline, and only the rest goes through the full check.
        for name, value in zip(_STRINGS, _get_strings(self), strict=True):
            if type(value) is not str or not value.isascii():
                _check_str(name, value)
        for name, value in zip(_TUPLES, _get_tuples(self), strict=True):
            if not isinstance(value, tuple):
                raise TypeError(f"entry field {name!r} must be a tuple, not {type(value).__name__}")
            for item in value:
                if type(item) is not str or not item.isascii():
                    _check_str(name, item)
        if not isinstance(self.seq, int) or isinstance(self.seq, bool):
            raise TypeError(f"entry field 'seq' must be an int, not {type(self.seq).__name__}")
        if not -1 <= self.seq <= _MAX_SEQ:
            raise EntryError(f"entry field 'seq' must be in [-1, 2**63), got {self.seq}")
        for name in ("id", "kind"):
            if not getattr(self, name):
                raise EntryError(f"entry field {name!r} must not be empty")
        _check_time("time", self.time)
        for name, value in zip(_HEX_STRINGS, _get_hex_strings(self), strict=True):
            if value and not _HEX.fullmatch(value):
                _check_hex(name, value)
        for item in self.objects:
            _check_hex("objects", item)
        if self.fingerprint and len(self.fingerprint) != 64:
            raise EntryError(
                f"entry field 'fingerprint' must be 64 hex digits (SHA-256) or empty, "
                f"got {len(self.fingerprint)} digits"
            )


_FIELDS = tuple(f.name for f in fields(Entry))
_TUPLES = ("objects", "rules", "reasons")
_STRINGS = tuple(name for name in _FIELDS if name not in _TUPLES and name != "seq")
_HEX_STRINGS = ("fingerprint", "job", "task", "actor", "function", "inputs")
_get_fields = operator.attrgetter(*_FIELDS)
_get_strings = operator.attrgetter(*_STRINGS)
_get_tuples = operator.attrgetter(*_TUPLES)
_get_hex_strings = operator.attrgetter(*_HEX_STRINGS)


def encode(entry: Entry) -> bytes:
    """The canonical bytes of `entry`: what the Merkle tree's leaf hash covers.

    Exactly what ``json.dumps(fields, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)`` gives (a test holds them equal), written out directly: the
    sequencer encodes every entry it appends."""
    if not isinstance(entry, Entry):
        raise TypeError(f"expected an Entry, not {type(entry).__name__}")
    e = entry
    return (
        f'{{"actor":{_s(e.actor)},"fingerprint":{_s(e.fingerprint)},"function":{_s(e.function)},'
        f'"id":{_s(e.id)},"identity":{_s(e.identity)},"inputs":{_s(e.inputs)},"job":{_s(e.job)},'
        f'"kind":{_s(e.kind)},"node":{_s(e.node)},"objects":{_list(e.objects)},'
        f'"outcome":{_s(e.outcome)},"parent":{_s(e.parent)},"policy":{_s(e.policy)},'
        f'"reasons":{_list(e.reasons)},"rules":{_list(e.rules)},"seq":{int(e.seq)},'
        f'"task":{_s(e.task)},"tenant":{_s(e.tenant)},"time":{_s(e.time)}}}'
    ).encode()


_s = json.encoder.encode_basestring  # type: ignore[attr-defined]  # ensure_ascii=False, in C


def _list(items: tuple[str, ...]) -> str:
    return "[" + ",".join(_s(item) for item in items) + "]"


def _encode_generic(entry: Entry) -> bytes:
    """The canonical bytes by the JSON encoder itself: what `encode` must equal."""
    return _ENCODER.encode(dict(zip(_FIELDS, _get_fields(entry), strict=True))).encode()


def decode(data: bytes) -> Entry:
    """The entry whose canonical encoding is `data`; :class:`EntryError` for anything else."""
    if not isinstance(data, bytes):
        raise TypeError(f"entry data must be bytes, not {type(data).__name__}")
    wire = _decode_canonical(data)
    if wire is None:
        _decode_strictly(data)  # raises, naming the problem
        raise EntryError("entry data is not a canonical entry")  # pragma: no cover
    entry = object.__new__(Entry)
    for name, value in zip(_FIELDS, _get_fields(wire), strict=True):
        object.__setattr__(entry, name, value)
    return entry


# The fast path: a C decoder that checks every type and constraint `Entry.__post_init__`
# checks, and a C re-encoding compared with the input for the one-spelling rule. It says only
# yes or no; on no, `_decode_strictly` (the reference, in Python) names the problem. Its
# fields are in sorted order, which is the canonical key order.
_Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]*$")]
_Named = Annotated[str, msgspec.Meta(min_length=1)]


class _Canonical(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    actor: _Hex
    fingerprint: Annotated[str, msgspec.Meta(pattern="^(?:[0-9a-f]{64})?$")]
    function: _Hex
    id: _Named
    identity: str
    inputs: _Hex
    job: _Hex
    kind: _Named
    node: str
    objects: tuple[_Hex, ...]
    outcome: str
    parent: str
    policy: str
    reasons: tuple[str, ...]
    rules: tuple[str, ...]
    seq: Annotated[int, msgspec.Meta(ge=-1, le=_MAX_SEQ)]
    task: _Hex
    tenant: str
    time: Annotated[str, msgspec.Meta(pattern=f"^{_TIME.pattern}$")]


_CANONICAL_DECODER = msgspec.json.Decoder(_Canonical)
_CANONICAL_ENCODER = msgspec.json.Encoder()


def _decode_canonical(data: bytes) -> _Canonical | None:
    """The fields of `data` if it is a canonical entry, else None."""
    try:
        wire = _CANONICAL_DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):  # DecodeError includes ValidationError
        return None
    if _CANONICAL_ENCODER.encode(wire) != data:
        return None
    try:
        datetime.fromisoformat(wire.time[:-1])  # the pattern admits a 30 February
    except ValueError:
        return None
    return wire


def unsequenced_origin(data: bytes) -> tuple[str, str]:
    """The (id, node) of `data` if it is the canonical encoding of an unsequenced entry (seq
    -1), without building an :class:`Entry`: the sequencer's check of what a node sends.
    :class:`EntryError` names the problem otherwise."""
    if not isinstance(data, bytes):
        raise TypeError(f"entry data must be bytes, not {type(data).__name__}")
    wire = _decode_canonical(data)
    if wire is None:
        _decode_strictly(data)  # raises, naming the problem
        raise EntryError("entry data is not a canonical entry")  # pragma: no cover
    if wire.seq != -1:
        raise EntryError(f"it carries seq {wire.seq}; nodes send seq -1")
    return wire.id, wire.node


def _decode_strictly(data: bytes) -> Entry:
    """`decode`, written out check by check: the reference the fast path must agree with,
    and what names the problem when it does not accept `data`."""
    if not isinstance(data, bytes):
        raise TypeError(f"entry data must be bytes, not {type(data).__name__}")
    try:
        value = json.loads(
            data.decode("utf-8"), parse_float=_reject_number, parse_constant=_reject_number
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise EntryError(f"entry data is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise EntryError(f"entry data is a JSON {type(value).__name__}, not an object")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise EntryError(f"entry data has unknown key(s): {', '.join(map(repr, unknown))}")
    missing = [name for name in _FIELDS if name not in value]
    if missing:
        raise EntryError(f"entry data lacks key(s): {', '.join(map(repr, missing))}")
    for name in _TUPLES:
        if not isinstance(value[name], list):
            raise EntryError(f"entry data: {name!r} must be a list of strings")
        value[name] = tuple(value[name])
    # Exactly the entry's fields are present (checked above), so the object is filled field by
    # field and then checked as the constructor checks it: a third of the cost of Entry(**value)
    # on the sequencer's hot path.
    entry = object.__new__(Entry)
    for name in _FIELDS:
        object.__setattr__(entry, name, value[name])
    try:
        entry.__post_init__()
    except TypeError as error:
        raise EntryError(f"entry data: {error}") from None
    # One entry, one spelling: whitespace, key order, escapes and duplicate keys all show up
    # as a difference here. (`value` holds exactly the entry's fields, as checked above.)
    if encode(entry) != data:
        raise EntryError(
            "entry data is not in canonical form (sorted keys, no whitespace, UTF-8, no escapes "
            "beyond JSON's required ones, no duplicate keys)"
        )
    return entry


def from_decision(
    decision: Decision,
    *,
    id: str,
    kind: str,
    time: str,
    tenant: str,
    node: str | None = None,
    identity: str = "",
    fingerprint: str = "",
    job: str = "",
    task: str = "",
    actor: str = "",
    objects: tuple[str, ...] = (),
    function: str = "",
    parent: str = "",
) -> Entry:
    """The entry recording `decision`: its outcome, rule ids, reasons, input digest and
    policy version. `node` defaults to the decision's ``node_id`` (or "" when it has none)."""
    return Entry(
        id=id,
        time=time,
        kind=kind,
        tenant=tenant,
        identity=identity,
        fingerprint=fingerprint,
        job=job,
        task=task,
        actor=actor,
        objects=tuple(objects),
        function=function,
        outcome=decision.outcome.value,
        rules=tuple(decision.rule_ids),
        reasons=tuple(decision.reasons),
        inputs=decision.input_digest,
        policy=decision.policy_version,
        node=(decision.node_id or "") if node is None else node,
        parent=parent,
    )


def with_seq(entry: Entry, seq: int) -> Entry:
    """`entry` at position `seq`: the sequencer's copy, made without checking the other
    fields again (they were checked when `entry` was made)."""
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
        raise EntryError(f"a sequenced entry's seq must be in [0, 2**63), got {seq!r}")
    sequenced = object.__new__(Entry)
    for name, value in zip(_FIELDS, _get_fields(entry), strict=True):
        object.__setattr__(sequenced, name, value)
    object.__setattr__(sequenced, "seq", seq)
    return sequenced


_UNSEQUENCED = b',"seq":-1,"task":'  # where the seq sits in canonical bytes (keys sorted)


def sequenced(data: bytes, seq: int) -> bytes:
    """`data`, the canonical bytes of an unsequenced entry, at position `seq`: the bytes
    ``encode(with_seq(decode(data), seq))`` without decoding or encoding. (Inside a JSON
    string every quote is escaped, so the only unescaped ``,"seq":`` is the key itself.)"""
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq <= _MAX_SEQ:
        raise EntryError(f"a sequenced entry's seq must be in [0, 2**63), got {seq!r}")
    head, mark, tail = data.partition(_UNSEQUENCED)
    if not mark:
        raise EntryError("not the canonical bytes of an unsequenced entry (seq -1)")
    return b'%s,"seq":%d,"task":%s' % (head, seq, tail)


def entry_time(when: datetime | None = None) -> str:
    """`when` (an aware datetime; now by default) as an entry's time string."""
    if when is None:
        when = datetime.now(UTC)
    elif when.tzinfo is None:
        raise ValueError("an entry's time needs an aware datetime, not a naive one")
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def check_time(name: str, value: str) -> None:
    """Raise :class:`EntryError` unless `value` is an entry's time string."""
    _check_str(name, value)
    _check_time(name, value)


# --- checks -------------------------------------------------------------------------------


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"entry field {name!r} must be a str, not {type(value).__name__}")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise EntryError(f"entry field {name!r} has no UTF-8 encoding") from None


def _check_time(name: str, value: str) -> None:
    try:
        valid = _TIME.fullmatch(value) is not None and bool(datetime.fromisoformat(value[:-1]))
    except ValueError:
        valid = False
    if not valid:
        raise EntryError(
            f"{name!r} must be RFC 3339 UTC with microseconds "
            f"(2026-11-26T03:04:05.123456Z), got {value!r}"
        )


def _check_hex(name: str, value: str) -> None:
    if not _HEX.fullmatch(value):
        raise EntryError(f"entry field {name!r} must be lowercase hex, got {value!r}")


def _reject_number(text: str) -> Any:
    raise ValueError(f"{text} is not an integer: entries hold no floats")
