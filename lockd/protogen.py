"""Generate the gRPC code from protos/ (`make proto`); tests call `generate()` too.

The server's copy goes to `lockd/v1/`, the client library's to
`clients/python/lockd_client/v1/` (imports rewritten), so the client installs without
the server. Both copies register the same descriptors; protobuf accepts identical files.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTOS = REPO / "protos"
TARGETS = {
    "lockd.v1": REPO / "lockd" / "v1",
    "lockd_client.v1": REPO / "clients" / "python" / "lockd_client" / "v1",
}


def generate() -> dict[str, dict[str, bytes]]:
    """{python package: {file name: content}} for every proto under protos/lockd/v1."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "lockd" / "v1").glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "protoc",
                f"-I{PROTOS}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *sources,
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir = Path(tmp) / "lockd" / "v1"
        files = {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()}
    result = {}
    for package in TARGETS:
        result[package] = {
            name: re.sub(
                rb"\bfrom lockd\.v1 import", b"from " + package.encode() + b" import", data
            )
            for name, data in files.items()
        }
    return result


def main() -> None:
    """Write the generated files (stale ones removed)."""
    for package, files in generate().items():
        target = TARGETS[package]
        for old in target.glob("*_pb2*.py*"):
            old.unlink()
        for name, data in files.items():
            (target / name).write_bytes(data)
        print(f"{package}: {', '.join(sorted(files))}", file=sys.stderr)


if __name__ == "__main__":
    main()
