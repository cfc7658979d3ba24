"""The ``fabric`` command.

Each subcommand lives in its own module, which defines
``register(subparsers) -> None``: it adds its parser(s) with
:func:`fabric.cli._common.add_command` and gives each a ``handler(args) -> int``.
A new command is one more entry in :data:`COMMAND_MODULES`; nothing else here changes.

Errors: a :class:`~fabric.exceptions.FabricError`, ``OSError`` or ``grpc.RpcError`` is
printed as one line, ``fabric: error: ...``, with exit status 1; ``--verbose`` adds the
traceback. Anything else is a bug and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from fabric.cli._common import verbose_parent

from fabric.exceptions import FabricError

PROG = "fabric"

# Modules that register subcommands, in the order `fabric --help` lists them. They import
# their heavy dependencies (grpc, cryptography) inside their handlers, so `fabric --help`
# and every other command stay quick to start.
COMMAND_MODULES: list[str] = [
    "fabric.cli._start",
    "fabric.cli._status",
    "fabric.cli._certs",
    "fabric.cli._demo",
    "fabric.cli._policy",
    "fabric.cli._audit",
    "fabric.cli._compliance",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fabric: a secure, multi-tenant compute fabric over mutual-TLS gRPC.",
        parents=[verbose_parent()],
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fabric`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # --help and usage errors: argparse has printed what it had to say.
        return exc.code if isinstance(exc.code, int) else 2
    verbose = bool(getattr(args, "verbose", False))
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = describe_error(exc)
        if message is None:
            raise
        if verbose:
            traceback.print_exc()
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


def describe_error(exc: BaseException) -> str | None:
    """One line for an error the user can act on, or None for a bug."""
    if isinstance(exc, FabricError):
        return _first_line(exc.diagnostics())
    if isinstance(exc, OSError):
        return _describe_os_error(exc)
    grpc = sys.modules.get("grpc")  # only loaded, and only raisable, once a command used it
    if grpc is not None and isinstance(exc, grpc.RpcError):
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else None
        name = code.name if code is not None else "RPC failed"
        return _first_line(f"{name}: {details}" if details else name)
    return None


def _describe_os_error(exc: OSError) -> str:
    if exc.strerror is None:
        return _first_line(str(exc)) or type(exc).__name__
    message = exc.strerror
    if exc.filename is not None:
        message += f": {exc.filename}"
    if exc.filename2 is not None:
        message += f" -> {exc.filename2}"
    return message


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


if __name__ == "__main__":
    sys.exit(main())
