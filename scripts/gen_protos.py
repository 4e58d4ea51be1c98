"""Generate the Python protobuf and gRPC modules (`make proto`).

Runs grpc_tools.protoc over every .proto under proto/ into
libs/common/src/meshserve/common/proto/ (git-ignored), then fixes two things:

* imports: protoc writes `from meshserve.v1 import x_pb2`; we rewrite them to
  `from meshserve.common.proto.meshserve.v1 import x_pb2` (protobuf issue #1491);
* the KServe v2 module is built into a private descriptor pool. tritonclient and
  MLServer each register their own copy of the `inference.*` messages in protobuf's
  default pool, and a second registration of the same symbol fails with
  "duplicate symbol". On the wire only the service/method names and field numbers
  matter, so a private pool keeps us wire-compatible and importable beside them.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
OUT = ROOT / "libs/common/src/meshserve/common/proto"
PKG = "meshserve.common.proto"


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{include}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            f"--pyi_out={OUT}",
            *files,
        ]
    )
    if rc != 0:
        print("protoc failed", file=sys.stderr)
        return rc
    top_packages = sorted({f.split("/")[0] for f in files})
    import_re = re.compile(rf"^(from|import) ({'|'.join(top_packages)})(\.| )", re.M)
    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        text = import_re.sub(lambda m: f"{m.group(1)} {PKG}.{m.group(2)}{m.group(3)}", text)
        if path.name == "grpc_predict_v2_pb2.py":
            text = text.replace(
                "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
                "POOL = _descriptor_pool.DescriptorPool()\n"
                "DESCRIPTOR = POOL.AddSerializedFile(",
            )
            if "POOL = " not in text:
                print("unexpected protoc output: private pool not applied", file=sys.stderr)
                return 1
        path.write_text(text)
    for d in [OUT, *[p for p in OUT.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    print(f"generated {len(files)} proto files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
