#!/bin/sh
# Regenerate the checked-in protobuf modules (shim Task API, events, cgroup metrics, and the
# tests' CRI subset) with grpcio-tools: .venv/bin/pip install grpcio-tools, then run this.
set -eu
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. cocoon/shim/proto/*.proto
if [ -d tests/engines/cri ]; then
    .venv/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. tests/engines/cri/*.proto
fi
