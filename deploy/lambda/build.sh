#!/usr/bin/env bash
# Build the Lambda deployment package: the exporter and its dependencies (all pure Python, so one package serves
# x86_64 and arm64), zipped. Usage: deploy/lambda/build.sh [OUT.zip]   (default: dist/lambda.zip)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$(realpath -m "${1:-$root/dist/lambda.zip}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip install --quiet --disable-pip-version-check --no-compile --target "$work/package" "$root"
rm -rf "$work/package/bin"
mkdir -p "$(dirname "$out")"
rm -f "$out"
(cd "$work/package" && python3 -m zipfile -c "$out" .)
echo "$out"
