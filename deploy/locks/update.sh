#!/usr/bin/env bash
# Regenerate the image locks from pyproject.toml: `make lock` (needs uv and PyPI).
#
#   serve.txt   base + serve + grpc + s3   deploy/docker/serve.Dockerfile, model-server.Dockerfile
#               (s3: boto3, so the stock images pull `--bundle s3://...` / `-m s3://...` models)
#   lambda.txt  base + lambda         deploy/lambda/Dockerfile
#   train.txt   base + train          deploy/docker/train.Dockerfile, without torch and torchvision:
#               they come from PyTorch's CPU wheel index at the versions in train-torch.txt (PyPI's
#               builds are the CUDA ones and pull GBs of nvidia-* libraries, kept out of the lock)
#   build.txt   setuptools + wheel    the stage that builds the imgclf wheel
#
# Every lock pins exact versions with sha256 hashes (images install with --require-hashes) and
# holds markers for every platform (--universal), for the Python of the images' base (3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-uv}
compile() {
    "$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command "make lock" "$@"
}
compile pyproject.toml --extra serve --extra grpc --extra s3 -o deploy/locks/serve.txt
compile pyproject.toml --extra lambda -o deploy/locks/lambda.txt
compile deploy/locks/build.in -o deploy/locks/build.txt

# The train resolution once in full, to read the torch versions and the CUDA-only packages.
full=$(mktemp)
trap 'rm -f "$full"' EXIT
compile pyproject.toml --extra train --no-annotate --no-header -o "$full"
grep -E '^(torch|torchvision)==' "$full" | sed -E 's/ .*//; s/\\$//' > deploy/locks/train-torch.txt
exclude=()
for name in $(grep -oE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$full" | tr -d '='); do
    exclude+=(--no-emit-package "$name")
done
compile pyproject.toml --extra train "${exclude[@]}" -o deploy/locks/train.txt
