#!/usr/bin/env python3
"""Generate the Python gRPC code for proto/scc/handler/v1/handler.proto into generated/.

Run it after installing requirements.txt and after every change to the .proto file. The
output folder is git-ignored; server.py puts it on the import path.
"""

import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO_FILE = "scc/handler/v1/handler.proto"
OUTPUT = HERE / "generated"


def main() -> int:
    if not (PROTO_ROOT / PROTO_FILE).is_file():
        print(f"generate.py: {PROTO_ROOT / PROTO_FILE} not found", file=sys.stderr)
        return 1

    # Start from an empty folder so that code for a removed .proto file cannot linger.
    shutil.rmtree(OUTPUT, ignore_errors=True)
    OUTPUT.mkdir(parents=True)

    # grpc_tools ships the well-known types (google/protobuf/*.proto) in its _proto folder.
    well_known = resources.files("grpc_tools") / "_proto"
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={OUTPUT}",
        f"--pyi_out={OUTPUT}",
        f"--grpc_python_out={OUTPUT}",
        PROTO_FILE,
    ]
    status = protoc.main(arguments)
    if status != 0:
        print(f"generate.py: protoc failed with status {status}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
