"""Pieces shared by the ``fabric`` subcommands: errors, option parsing, credential paths."""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fabric.exceptions import FabricError

if TYPE_CHECKING:
    from fabric._pki import CredentialPaths

Handler = Callable[[argparse.Namespace], int]


class CommandError(FabricError):
    """The command cannot do what was asked (bad input, missing file, wrong state)."""


def verbose_parent() -> argparse.ArgumentParser:
    """An option set every (sub)command accepts, so ``--verbose`` works in any position."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        # SUPPRESS keeps a subcommand from resetting a --verbose given before it.
        default=argparse.SUPPRESS,
        help="show the full traceback when a command fails",
    )
    return parent


def add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    *,
    help: str,
    description: str | None = None,
    handler: Handler | None = None,
) -> argparse.ArgumentParser:
    """Add one subcommand. ``handler(args) -> exit status`` runs when it is chosen."""
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[verbose_parent()],
        # Multi-line descriptions carry their own layout (examples); others are wrapped.
        formatter_class=argparse.RawDescriptionHelpFormatter
        if description is not None and "\n" in description
        else argparse.HelpFormatter,
    )
    if handler is not None:
        parser.set_defaults(handler=handler)
    return parser


# ----------------------------------------------------------------------------- key=value input

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]*")


def _pairs(text: str, option: str) -> list[tuple[str, str]]:
    pairs = []
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        key, sep, value = token.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or _KEY_RE.fullmatch(key) is None:
            raise CommandError(f"bad {option} token {token!r}: expected KEY=VALUE")
        pairs.append((key, value))
    return pairs


def parse_resources(text: str, option: str = "--resources") -> dict[str, float]:
    """``{"CPU": 4, "GPU": 1}`` (JSON) or ``CPU=4,GPU=1``; quantities are non-negative."""
    raw: dict[str, object]
    if text.lstrip().startswith("{"):
        raw = _json_object(text, option)
    else:
        raw = dict(_pairs(text, option))
    resources: dict[str, float] = {}
    for key, value in raw.items():
        amount = _quantity(value)
        if amount is None:
            raise CommandError(
                f"bad {option} token {f'{key}={value}'!r}: the quantity must be a number >= 0"
            )
        resources[key] = amount
    return resources


def _quantity(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        amount = float(value)
    except ValueError:
        return None
    return amount if math.isfinite(amount) and amount >= 0 else None


def parse_labels(text: str, option: str = "--labels") -> dict[str, str]:
    """``{"zone": "a"}`` (JSON) or ``zone=a,tier=gold``."""
    if text.lstrip().startswith("{"):
        raw = _json_object(text, option)
        bad = [k for k, v in raw.items() if not isinstance(v, str)]
        if bad:
            raise CommandError(f"bad {option} value for {bad[0]!r}: labels are strings")
        return {k: str(v) for k, v in raw.items()}
    return dict(_pairs(text, option))


def _json_object(text: str, option: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"bad {option} JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError(f"bad {option} JSON: expected an object")
    return value


# ----------------------------------------------------------------------------- credentials


def parse_identity(text: str) -> tuple[str, str]:
    """``KIND/NAME`` as given to ``--identity``."""
    kind, sep, name = text.partition("/")
    if not sep or not kind or not name or "/" in name:
        raise CommandError(f"bad --identity {text!r}: expected KIND/NAME, e.g. operator/admin")
    return kind, name


def credential_paths(certs_dir: Path, kind: str, name: str) -> CredentialPaths:
    """The credentials of ``kind/name`` in a directory laid out like a CA directory
    (``ca.pem``, ``crl.pem``, ``issued/<kind>-<name>.pem|.key``). Every file must exist."""
    from fabric._pki import CredentialPaths

    issued = certs_dir / "issued"
    paths = CredentialPaths(
        cert=issued / f"{kind}-{name}.pem",
        key=issued / f"{kind}-{name}.key",
        ca=certs_dir / "ca.pem",
        crl=certs_dir / "crl.pem",
    )
    for path in (paths.ca, paths.crl, paths.cert, paths.key):
        if not path.is_file():
            raise CommandError(f"missing certificate file: {path}")
    return paths


# ----------------------------------------------------------------------------- output


def format_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Collection[int] = (),
) -> str:
    """Columns padded to their widest cell, two spaces apart; the columns whose indexes
    are in ``right`` are right-aligned (numbers). No line has trailing spaces."""
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
