"""``fabric audit``: read, prove and verify the head's tamper-evident audit log.

Each subcommand is one ``_add_<name>(subparsers)`` function that adds its parser and
handler; a new subcommand is one more such function and one more entry in
:data:`SUBCOMMANDS`. Like every command, heavy imports (grpc, cryptography) happen inside
the handlers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from fabric.cli._common import CommandError, add_command
from fabric.cli._head import add_credential_args, add_head_args, head_stub, timeout

if TYPE_CHECKING:
    from fabric.audit import Checkpoint, Entry

    from fabric._proto import fabric_pb2

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

_DESCRIPTION = """\
Read the head's audit log: every decision the fabric took, with who asked, what was
decided, by which rule, on which inputs and under which policy version. Operators and
auditors see every entry; a tenant sees only its own.

The log is a Merkle tree with signed checkpoints, so its integrity needs no trust in the
head: `prove` fetches a proof of one entry that `check-proof` checks offline with the log's
verifier key, and `verify` checks a whole stored log, or that the head's log only ever
grew since you last looked."""

_VERIFY_DESCRIPTION = """\
With --state-dir: recompute the whole Merkle tree of DIR/audit.db from its entries and
check every signed checkpoint against it with the verifier key (DIR/audit.vkey unless
--vkey), naming each problem: flipped, deleted, inserted, reordered, truncated, rollback...

With --address: fetch the head's newest checkpoint with a consistency proof from the one
you saw last. It must verify with --vkey (never with the key the head sends) and extend
the one you saw last; otherwise it is a rollback or a fork, and says which.

Either way the checkpoint you saw last is kept in --last-seen and updated only when the
log verifies. Exit status 1 when it does not."""

DEFAULT_LAST_SEEN = Path("~/.fabric/audit-last-seen")
_REASONS_WIDTH = 60
_FILTERS = ("tenant", "kind", "outcome", "task", "actor", "object", "rule", "node")
_DURATION = re.compile(r"([0-9]+)([smhd])", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def register(subparsers: Subparsers) -> None:
    audit = add_command(
        subparsers,
        "audit",
        help="read, prove and verify the audit log: query, explain, tail, prove, verify",
        description=_DESCRIPTION,
    )
    sub = audit.add_subparsers(dest="audit_command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)


# ----------------------------------------------------------------------------- options


def _add_filters(parser: argparse.ArgumentParser) -> None:
    filters = parser.add_argument_group("filters (every one given must hold)")
    filters.add_argument("--tenant", metavar="T", help="entries about tenant T")
    filters.add_argument("--kind", metavar="K", help="of kind K: admit, place, transfer, ...")
    filters.add_argument("--outcome", metavar="O", help="with outcome O: place, refuse, ...")
    filters.add_argument("--task", metavar="ID", help="about task ID (hex)")
    filters.add_argument("--actor", metavar="ID", help="about actor ID (hex)")
    filters.add_argument("--object", metavar="ID", help="naming object ID (hex)")
    filters.add_argument("--rule", metavar="R", help="decided by rule R")
    filters.add_argument("--node", metavar="N", help="decided by node N")
    filters.add_argument(
        "--since",
        metavar="TIME",
        help="at or after TIME: ISO 8601 (UTC unless it says otherwise) or 30s, 15m, 2h, 7d ago",
    )
    filters.add_argument("--until", metavar="TIME", help="before TIME (same forms as --since)")


def _add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("table", "json", "jsonl"),
        default="table",
        help="a table, a JSON list, or one JSON entry per line (default: %(default)s)",
    )


# ----------------------------------------------------------------------------- query


def _add_query(subparsers: Subparsers) -> None:
    query = add_command(
        subparsers,
        "query",
        help="list the entries that match filters",
        description="List the audit entries that match every filter given, in log order.",
        handler=_query,
    )
    _add_filters(query)
    query.add_argument("--limit", type=_count, metavar="N", help="at most N entries")
    _add_format(query)
    add_head_args(query)


def _query(args: argparse.Namespace) -> int:
    from fabric._proto import fabric_pb2

    request = _request(args, fabric_pb2.AuditQuery(limit=args.limit or 0, after_seq=-1))
    with head_stub(args, "audit query") as stub:
        rows = _stream(stub.QueryAudit(request, timeout=timeout(args)))
        _print_entries(rows, args.format)
    return 0


# ----------------------------------------------------------------------------- explain


def _add_explain(subparsers: Subparsers) -> None:
    explain = add_command(
        subparsers,
        "explain",
        help="the provenance chain of a task",
        description=(
            "Every entry about TASK_ID and, following parent links upward, about the tasks "
            "it descends from, one block per entry, each task's entries indented under the "
            "entry they follow from."
        ),
        handler=_explain,
    )
    explain.add_argument("task", metavar="TASK_ID", help="the task id (hex)")
    explain.add_argument("--json", action="store_true", help="print the entries as JSON")
    add_head_args(explain)


def _explain(args: argparse.Namespace) -> int:
    from fabric._proto import fabric_pb2

    request = fabric_pb2.AuditQuery(task=args.task, explain=True, after_seq=-1)
    with head_stub(args, "audit explain") as stub:
        chain = list(_stream(stub.QueryAudit(request, timeout=timeout(args))))
    if args.json:
        _print_entries(chain, "json")
    elif not chain:
        print(f"no entries about task {args.task} that you may see")
    else:
        print(render_chain([entry for entry, _ in chain]))
    return 0


def render_chain(chain: Sequence[Entry]) -> str:
    """One block per entry, in log order, indented by its depth in the provenance chain:
    an entry that names a parent sits under it, and an entry of a task already shown sits
    with that task's first entry (admission, then placement, then finish)."""
    depth_of_id: dict[str, int] = {}
    depth_of_task: dict[str, int] = {}
    blocks = []
    for entry in chain:
        if entry.parent in depth_of_id:
            depth = depth_of_id[entry.parent] + 1
        else:
            depth = depth_of_task.get(entry.task, 0)
        depth_of_id[entry.id] = depth
        if entry.task:
            depth_of_task.setdefault(entry.task, depth)
        pad = "    " * depth
        about = ", ".join(
            f"{name} {value}"
            for name, value in (("task", entry.task), ("actor", entry.actor), ("job", entry.job))
            if value
        )
        lines = [f"{pad}#{entry.seq} {entry.kind}: {entry.outcome or '-'}  ({entry.time})"]
        details = [
            ("tenant", entry.tenant),
            ("about", about),
            ("rules", ", ".join(entry.rules)),
            ("reasons", "; ".join(entry.reasons)),
            ("objects", ", ".join(entry.objects)),
            ("node", entry.node),
            ("policy", entry.policy),
            ("inputs", entry.inputs),
            ("identity", entry.identity),
            ("parent", entry.parent),
            ("id", entry.id),
        ]
        lines += [f"{pad}    {name}: {value}" for name, value in details if value]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ----------------------------------------------------------------------------- tail


def _add_tail(subparsers: Subparsers) -> None:
    tail = add_command(
        subparsers,
        "tail",
        help="the last entries, then (--follow) new ones as they come",
        description=(
            "Print the last N entries that match the filters; with --follow, keep printing "
            "new ones as the head appends them, until interrupted (Ctrl-C)."
        ),
        handler=_tail,
    )
    tail.add_argument(
        "-n", type=_count, default=20, metavar="N", help="how many (default: %(default)s)"
    )
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    _add_filters(tail)
    _add_format(tail)
    add_head_args(tail)


def _tail(args: argparse.Namespace) -> int:
    from fabric.audit import parse_vkey, verify_checkpoint

    from fabric._proto import fabric_pb2

    with head_stub(args, "audit tail") as stub:
        # The log's size, from the newest checkpoint (the head signs one after every
        # batch). Only a hint of where to look: the query itself runs to the end.
        reply = stub.AuditCheckpoint(fabric_pb2.AuditCheckpointRequest(), timeout=timeout(args))
        name, key = parse_vkey(reply.vkey)
        size = verify_checkpoint(reply.checkpoint, name, key).size
        # The last N matches: look back over a window of entries, widened until it holds
        # N matches or reaches the start of the log.
        window = max(args.n, 1)
        while True:
            after = max(-1, size - 1 - window)
            request = _request(args, fabric_pb2.AuditQuery(after_seq=after))
            rows = list(_stream(stub.QueryAudit(request, timeout=timeout(args))))
            if len(rows) >= args.n or after == -1:
                break
            window *= 4
        # Every row fetched is printed or older than the last N; the follow goes on after
        # the newest one (or after the window, if nothing in it matched).
        last = rows[-1][0].seq if rows else after
        rows = rows[-args.n :] if args.n else []
        # A JSON list cannot be streamed: following prints JSON lines.
        printer = _Printer("jsonl" if args.follow and args.format == "json" else args.format)
        printer.start(rows)
        if not args.follow:
            printer.end()
            return 0
        request = _request(args, fabric_pb2.AuditQuery(after_seq=last, follow=True))
        call = stub.QueryAudit(request)
        try:
            for row in _stream(call):
                printer.add(row)
        except KeyboardInterrupt:
            call.cancel()
    return 0


# ----------------------------------------------------------------------------- prove, check-proof


def _add_prove(subparsers: Subparsers) -> None:
    prove = add_command(
        subparsers,
        "prove",
        help="fetch a proof bundle of one entry, checkable offline",
        description=(
            "Fetch from the head a proof bundle of entry SEQ: the entry, a signed "
            "checkpoint and the inclusion proof that leads from one to the other. "
            "`fabric audit check-proof` checks it with nothing but the log's verifier key."
        ),
        handler=_prove,
    )
    prove.add_argument("seq", type=_count, metavar="SEQ", help="the entry's position in the log")
    prove.add_argument("--out", type=Path, metavar="FILE", help="write it here, not to stdout")
    add_head_args(prove)


def _prove(args: argparse.Namespace) -> int:
    from fabric._proto import fabric_pb2

    with head_stub(args, "audit prove") as stub:
        proof = stub.ProveAudit(fabric_pb2.AuditProveRequest(seq=args.seq), timeout=timeout(args))
    if args.out is None:
        print(proof.bundle)
    else:
        args.out.write_text(proof.bundle)
        print(f"wrote the proof of entry {args.seq} to {args.out}", file=sys.stderr)
    return 0


def _add_check_proof(subparsers: Subparsers) -> None:
    check = add_command(
        subparsers,
        "check-proof",
        help="check a proof bundle offline with the log's verifier key",
        description=(
            "Check BUNDLE (a file, or - for stdin) with the verifier key VKEY, without "
            "contacting anyone: the checkpoint must be signed by that key and the inclusion "
            "proof must lead from the entry to the checkpoint's root. Prints the entry, or "
            "the step that failed (exit status 1)."
        ),
        handler=_check_proof,
    )
    check.add_argument("bundle", metavar="BUNDLE", help="the bundle `fabric audit prove` wrote")
    check.add_argument(
        "--vkey",
        required=True,
        metavar="VKEY_OR_FILE",
        help="the log's verifier key, or a file holding it (e.g. the head's audit.vkey)",
    )
    check.add_argument("--origin", metavar="LOG", help="also require the checkpoint of this log")


def _check_proof(args: argparse.Namespace) -> int:
    from fabric.audit import ProofBundle, ProofError, check_proof, parse_vkey, verify_checkpoint

    vkey = _read_vkey(args.vkey)
    source = "stdin" if args.bundle == "-" else args.bundle
    try:
        text = sys.stdin.read() if args.bundle == "-" else Path(args.bundle).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read {source}: {error}") from error
    try:
        bundle = ProofBundle.from_json(text.strip())
        entry = check_proof(bundle, vkey, origin=args.origin)
    except ProofError as error:
        raise CommandError(f"{source}: the proof does not verify: {error}") from error
    name, key = parse_vkey(vkey)
    checkpoint = verify_checkpoint(bundle.checkpoint, name, key)
    print(
        f"verified: entry {entry.seq} is in log {checkpoint.origin}, under its checkpoint "
        f"of {checkpoint.size} entries signed by {name}"
    )
    print(json.dumps(json.loads(bundle.entry), indent=2, sort_keys=True, ensure_ascii=False))
    return 0


# ----------------------------------------------------------------------------- verify


def _add_verify(subparsers: Subparsers) -> None:
    verify = add_command(
        subparsers,
        "verify",
        help="verify the head's stored log, or that its log only grew since last time",
        description=_VERIFY_DESCRIPTION,
        handler=_verify,
    )
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="the head's state directory on this host (or the --state-dir of `fabric start`)",
    )
    where.add_argument("--address", metavar="HEAD", help="the head, HOST:PORT")
    add_credential_args(verify, required=False)
    verify.add_argument(
        "--vkey",
        metavar="VKEY_OR_FILE",
        help="the log's verifier key, or a file holding it; keep your own copy "
        "(required with --address)",
    )
    verify.add_argument(
        "--last-seen",
        type=Path,
        default=DEFAULT_LAST_SEEN,
        metavar="FILE",
        help="where the last checkpoint that verified is kept (default: %(default)s)",
    )


def _verify(args: argparse.Namespace) -> int:
    return _verify_local(args) if args.state_dir is not None else _verify_remote(args)


def _verify_local(args: argparse.Namespace) -> int:
    from fabric.audit import SqliteAuditStore, verify_log

    from fabric._audit_service import DB_FILE, VKEY_FILE

    state_dir = args.state_dir
    if not (state_dir / DB_FILE).is_file() and (state_dir / "head" / DB_FILE).is_file():
        state_dir = state_dir / "head"  # `fabric start --head --state-dir S` keeps it in S/head
    db = state_dir / DB_FILE
    if not db.is_file():  # opening would create an empty log, which verifies
        raise CommandError(f"no audit log at {db}")
    if args.vkey is None and not (state_dir / VKEY_FILE).is_file():
        raise CommandError(f"no verifier key at {state_dir / VKEY_FILE}: give it with --vkey")
    vkey = _read_vkey(args.vkey or str(state_dir / VKEY_FILE))
    last_seen_path = args.last_seen.expanduser()
    last_seen = _read_last_seen(last_seen_path)
    store = SqliteAuditStore(db)
    try:
        report = verify_log(store, vkey, last_seen)
    finally:
        store.close()
    if not report.ok:
        for problem in report.problems:
            print(problem)
        raise CommandError(
            f"{db} does not verify ({_plural(len(report.problems), 'problem')}); "
            f"{last_seen_path} is unchanged"
        )
    print(f"{db}: {report.diagnostics()}")
    if report.checkpoint is not None and report.checkpoint != last_seen:
        _save_last_seen(last_seen_path, report.checkpoint)
        print(f"saved the newest checkpoint in {last_seen_path}")
    return 0


def _verify_remote(args: argparse.Namespace) -> int:
    from fabric.audit import CheckpointError, parse_vkey, verify_checkpoint

    from fabric._proto import fabric_pb2

    if args.certs is None or args.vkey is None:
        raise CommandError("verify --address needs --certs and --vkey")
    vkey = _read_vkey(args.vkey)
    name, key = parse_vkey(vkey)
    last_seen_path = args.last_seen.expanduser()
    last_text = _read_last_seen(last_seen_path)
    last: Checkpoint | None = None
    if last_text is not None:
        try:
            last = verify_checkpoint(last_text, name, key)
        except CheckpointError as error:
            raise CommandError(
                f"the checkpoint in {last_seen_path} does not verify with {name}: {error}"
            ) from error
    request = fabric_pb2.AuditCheckpointRequest(old_size=last.size if last else 0)
    with head_stub(args, "audit verify") as stub:
        reply = stub.AuditCheckpoint(request, timeout=timeout(args))
    problem = _remote_problem(reply, vkey, last)
    if problem is not None:
        print(problem)
        raise CommandError(
            f"the audit log of the head at {args.address} does not verify; "
            f"{last_seen_path} is unchanged"
        )
    new = verify_checkpoint(reply.checkpoint, name, key)
    if last is None:
        since = "(no checkpoint seen before to compare with)"
    else:
        since = f"and extends the one of {_plural(last.size, 'entry')} you saw last"
    print(f"ok: the head's checkpoint of {_plural(new.size, 'entry')} verifies with {name} {since}")
    if reply.checkpoint != last_text:
        _save_last_seen(last_seen_path, reply.checkpoint)
        print(f"saved the newest checkpoint in {last_seen_path}")
    return 0


def _remote_problem(
    reply: fabric_pb2.AuditCheckpointReply, vkey: str, last: Checkpoint | None
) -> str | None:
    """What is wrong with the head's answer, as "<kind>: <detail>", or None."""
    from fabric.audit import CheckpointError, parse_vkey, verify_checkpoint, verify_consistency

    name, key = parse_vkey(vkey)
    # (1) The checkpoint must be signed by the key the verifier holds, whatever the head
    # says its key is (c2sp.org/signed-note: signatures by other keys are ignored).
    try:
        new = verify_checkpoint(reply.checkpoint, name, key)
    except CheckpointError as error:
        detail = f"the head's checkpoint does not verify with {name}: {error}"
        if reply.vkey != vkey:
            detail += f" (the head names the key {reply.vkey})"
        return f"checkpoint-invalid: {detail}"
    if last is None:
        return None
    # (2) Of the same log (a key may sign for several: c2sp.org/tlog-checkpoint).
    if new.origin != last.origin:
        return f"other-log: the head's checkpoint is of log {new.origin!r}, not {last.origin!r}"
    # (3) A log only grows: fewer entries than signed before is a rollback.
    if new.size < last.size:
        return (
            f"rollback: the head's newest checkpoint is for {_plural(new.size, 'entry')}; "
            f"the one you saw last is signed for {last.size}"
        )
    # (4) RFC 9162 section 2.1.4.2: the old tree must be a prefix of the new one (any tree
    # extends the empty one).
    proof = list(reply.consistency)
    if last.size and not verify_consistency(
        last.size, new.size, last.root_hash, new.root_hash, proof
    ):
        return (
            f"forked: the head's log of {_plural(new.size, 'entry')} does not extend the one "
            f"of {last.size} you saw last (no valid consistency proof): its history was "
            "rewritten"
        )
    return None


def _read_last_seen(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read the last-seen checkpoint {path}: {error}") from error


def _save_last_seen(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# ----------------------------------------------------------------------------- talking to the head


def _request(args: argparse.Namespace, request: fabric_pb2.AuditQuery) -> fabric_pb2.AuditQuery:
    """`request` with the filters given on the command line."""
    for name in _FILTERS:
        value = getattr(args, name)
        if value:
            setattr(request, name, value)
    now = datetime.now(UTC)
    if args.since:
        request.since = _parse_time(args.since, "--since", now)
    if args.until:
        request.until = _parse_time(args.until, "--until", now)
    return request


def _stream(entries: Iterable[fabric_pb2.AuditEntry]) -> Iterator[tuple[Entry, bytes]]:
    """The entries the head streams, decoded (strictly) and checked against their seq."""
    from fabric.audit import EntryError, decode

    for message in entries:
        try:
            entry = decode(message.data)
        except EntryError as error:
            raise CommandError(
                f"the head sent a malformed entry at seq {message.seq}: {error}"
            ) from error
        if entry.seq != message.seq:
            raise CommandError(f"the head sent entry {entry.seq} as entry {message.seq}")
        yield entry, message.data


# ----------------------------------------------------------------------------- output


def _print_entries(rows: Iterable[tuple[Entry, bytes]], form: str) -> None:
    printer = _Printer(form)
    printer.start(rows)
    printer.end()


class _Printer:
    """Entries as a table, a JSON list or JSON lines. A table's rows after the first batch
    (``tail --follow``) keep the columns the first batch set, widening them as needed."""

    _HEADER = ("SEQ", "TIME", "KIND", "TENANT", "OUTCOME", "RULES", "TASK/ACTOR", "NODE")

    def __init__(self, form: str) -> None:
        self.form = form
        self.widths = [len(name) for name in (*self._HEADER, "REASONS")]
        self.listed: list[Any] = []

    def start(self, rows: Iterable[tuple[Entry, bytes]]) -> None:
        rows = list(rows)
        if self.form == "table":
            cells = [_cells(entry) for entry, _ in rows]
            for row in cells:
                self.widths = [max(w, len(c)) for w, c in zip(self.widths, row, strict=True)]
            self._line([*self._HEADER, "REASONS"])
            for row in cells:
                self._line(row)
        elif self.form == "json":
            self.listed = [json.loads(data) for _, data in rows]
        else:
            for _, data in rows:
                print(data.decode(), flush=True)

    def add(self, row: tuple[Entry, bytes]) -> None:
        entry, data = row
        if self.form == "table":
            cells = _cells(entry)
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, cells, strict=True)]
            self._line(cells)
        else:  # JSON lines, whichever format was asked: a list cannot be streamed
            print(data.decode(), flush=True)

    def end(self) -> None:
        if self.form == "json":
            print(json.dumps(self.listed, indent=2, sort_keys=True, ensure_ascii=False))

    def _line(self, cells: Sequence[str]) -> None:
        padded = [
            c.rjust(w) if i == 0 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, self.widths, strict=True))
        ]
        print("  ".join(padded).rstrip(), flush=True)


def _cells(entry: Entry) -> list[str]:
    reasons = "; ".join(entry.reasons)
    if len(reasons) > _REASONS_WIDTH:
        reasons = reasons[: _REASONS_WIDTH - 1] + "…"
    return [
        str(entry.seq),
        entry.time[:19].replace("T", " "),
        entry.kind,
        entry.tenant or "-",
        entry.outcome or "-",
        ",".join(entry.rules) or "-",
        entry.task or entry.actor or "-",
        entry.node or "-",
        reasons or "-",
    ]


# ----------------------------------------------------------------------------- parsing


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _parse_time(text: str, option: str, now: datetime) -> str:
    """An entry time string for `text`: ISO 8601 (naive means UTC), or a duration ago."""
    from fabric.audit import entry_time

    duration = _DURATION.fullmatch(text.strip())
    if duration is not None:
        amount, unit = duration.groups()
        return entry_time(now - timedelta(**{_UNITS[unit]: int(amount)}))
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(
            f"bad {option} {text!r}: expected ISO 8601 (2026-11-26T03:04:05) or 30s, 15m, 2h, 7d"
        ) from None
    return entry_time(when if when.tzinfo is not None else when.replace(tzinfo=UTC))


def _read_vkey(text: str) -> str:
    """A verifier key given as itself or as a file holding it."""
    from fabric.audit import KeyFormatError, parse_vkey

    path = Path(text).expanduser()
    if path.is_file():
        try:
            vkey = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise CommandError(f"cannot read the verifier key {path}: {error}") from error
        where = str(path)
    else:
        vkey, where = text.strip(), "--vkey"
    try:
        parse_vkey(vkey)
    except KeyFormatError as error:
        if where == "--vkey" and "+" not in vkey:
            raise CommandError(f"--vkey {text!r}: no such file, and not a verifier key") from None
        raise CommandError(f"{where}: {error}") from None
    return vkey


def _plural(n: int, noun: str) -> str:
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


# The subcommands of `fabric audit`, in the order its --help lists them.
SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    _add_query,
    _add_explain,
    _add_tail,
    _add_prove,
    _add_check_proof,
    _add_verify,
]
