"""Regenerate the Python gRPC stubs from proto/chameleon/v1/*.proto.

    python proto/generate.py           # write stubs beside the .proto files
    python proto/generate.py --check   # exit 1 when the committed stubs are stale

The stubs import each other as `chameleon.v1.*`; pyproject.toml makes proto/
a package root so that name resolves.
"""
from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_DIR = PROTO_ROOT / "chameleon" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency: only needed to (re)generate

    protos = sorted(PROTO_DIR.glob("*.proto"))
    rel = [str(p.relative_to(PROTO_ROOT)) for p in protos]
    include = str(Path(protoc.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *rel]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    out_dir = out_root / "chameleon" / "v1"
    return sorted(p for p in out_dir.iterdir() if p.name.endswith(SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="only compare, do not write")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        fresh_names = {p.name for p in fresh}
        current = {p.name for p in PROTO_DIR.iterdir() if p.name.endswith(SUFFIXES)}
        stale = sorted(
            [p.name for p in fresh if not (PROTO_DIR / p.name).exists()
             or not filecmp.cmp(p, PROTO_DIR / p.name, shallow=False)]
            + sorted(current - fresh_names))
        if args.check:
            if stale:
                print("stale generated stubs: " + ", ".join(stale)
                      + "\nrun: python proto/generate.py", file=sys.stderr)
                return 1
            return 0
        for name in current - fresh_names:
            (PROTO_DIR / name).unlink()
        for p in fresh:
            shutil.copyfile(p, PROTO_DIR / p.name)
        print(f"wrote {len(fresh)} files to {PROTO_DIR}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
