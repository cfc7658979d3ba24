"""Regenerate fabric/_proto/fabric_pb2*.py from fabric.proto (run after editing the .proto).

`--check` exits non-zero when the committed generated code is not what the .proto produces.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_DIR = Path(__file__).resolve().parent.parent / "fabric" / "_proto"
GENERATED = ("fabric_pb2.py", "fabric_pb2.pyi", "fabric_pb2_grpc.py")


def generate(out: Path) -> None:
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / "fabric.proto"),
        ]
    )
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    grpc_file = out / "fabric_pb2_grpc.py"
    # protoc emits an absolute import; the generated modules live inside a package.
    text = re.sub(
        r"^import fabric_pb2 as", "from . import fabric_pb2 as", grpc_file.read_text(), flags=re.M
    )
    grpc_file.write_text(text)


def main(argv: list[str]) -> int:
    if "--check" in argv:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            stale = [
                n for n in GENERATED if (Path(tmp) / n).read_text() != (PROTO_DIR / n).read_text()
            ]
        if stale:
            print(f"generated code is stale: {', '.join(stale)}; run python scripts/gen_proto.py")
            return 1
        return 0
    generate(PROTO_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
