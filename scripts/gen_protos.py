"""Regenerate the Python stubs in service/onnx_serve/protos/ from protos/*.proto.

    python scripts/gen_protos.py            # rewrite service/onnx_serve/protos/
    python scripts/gen_protos.py --check    # exit 1 if the committed stubs are stale

Two rewrites follow protoc:
- imports become package-relative (`from onnx_serve.protos.inference import ...`), so the stubs live
  inside our package instead of on sys.path;
- descriptors go into a private pool (onnx_serve.protos.POOL) instead of protobuf's default pool.
  tritonclient and KServe's client register the same `inference.*` names in the default pool, and a
  process that loads two different files with one symbol fails ("duplicate symbol"). A private pool
  lets our client, tritonclient and KServe live in one process; the wire format is unaffected.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "service" / "onnx_serve" / "protos"
PACKAGES = ("inference", "onnxserve")

POOL_INIT = '''"""Generated protobuf stubs (see scripts/gen_protos.py). Do not edit."""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
'''


def generate(out: Path) -> None:
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    args = ["protoc", f"-I{PROTO_DIR}", f"-I{protoc_include()}", f"--python_out={out}",
            f"--grpc_python_out={out}", f"--pyi_out={out}", *sources]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / "__init__.py").write_text(POOL_INIT)
    import_re = re.compile(rf"^from ({'|'.join(PACKAGES)})((?:\.\w+)*) import", re.MULTILINE)
    for path in out.rglob("*.py*"):
        if path.name == "__init__.py":
            continue
        text = import_re.sub(r"from onnx_serve.protos.\1\2 import", path.read_text())
        text = text.replace("_descriptor_pool.Default()", "__import__('onnx_serve.protos').protos.POOL")
        path.write_text(text)
    for package_dir in [d for d in out.rglob("*") if d.is_dir()]:
        (package_dir / "__init__.py").touch()


def protoc_include() -> str:
    import grpc_tools

    return str(Path(grpc_tools.__file__).parent / "_proto")


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare with the committed stubs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "protos"
        fresh.mkdir()
        generate(fresh)
        if args.check:
            if same_tree(fresh, OUT_DIR):
                print("service/onnx_serve/protos is current")
                return 0
            print("service/onnx_serve/protos is stale: run python scripts/gen_protos.py", file=sys.stderr)
            return 1
        shutil.rmtree(OUT_DIR, ignore_errors=True)
        shutil.copytree(fresh, OUT_DIR)
    print(f"wrote {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
