"""Regenerate the Python code for the `vlm.v1` contracts.

Usage: ``python protos/generate.py [--out DIR]``

The generated modules import each other as ``vlm.v1.<name>_pb2`` (absolute imports, no
post-processing), because the proto files live at ``protos/vlm/v1/`` and ``protos/`` is the
include root. ``tests/unit/protos/test_protos.py`` regenerates into a temporary folder and fails
on any difference from the committed files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent


def proto_files() -> list[Path]:
    """All contract files, in a stable order."""
    return sorted((ROOT / "vlm" / "v1").glob("*.proto"))


def generate(out: Path) -> None:
    """Write ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` for every contract into ``out``."""
    include = str(Path(protoc.__file__).parent / "_proto")
    for proto in proto_files():
        args = [
            "protoc",
            f"-I{ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(proto.relative_to(ROOT)),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: protos/)")
    args = parser.parse_args(argv)
    generate(args.out)
    print(f"generated {len(proto_files())} contracts into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
