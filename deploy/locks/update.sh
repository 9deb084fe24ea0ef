#!/usr/bin/env bash
# Regenerate the locks from pyproject.toml: `make lock` (needs uv and PyPI). Pins already in a lock
# are kept where pyproject.toml still allows them; `make lock LOCK_ARGS=--upgrade` (arguments to
# this script go to every `uv pip compile`) moves them all to the newest releases allowed.
#
#   serve.txt   base + serve + grpc + s3   deploy/docker/serve.Dockerfile, model-server.Dockerfile
#               (s3: boto3, so the stock images pull `--bundle s3://...` / `-m s3://...` models)
#   lambda.txt  base + lambda         deploy/lambda/Dockerfile
#   train.txt   base + train          deploy/docker/train.Dockerfile, without torch and torchvision:
#               they come from PyTorch's CPU wheel index at the versions in train-torch.txt (PyPI's
#               builds are the CUDA ones and pull GBs of nvidia-* libraries, kept out of the lock)
#   build.txt   setuptools + wheel    the stage that builds the imgclf wheel
#   dev.txt     base + DEV_EXTRAS     `make install-dev` (tests and CI), without torch, torchvision
#               and their CUDA parts, like train.txt: those come from the Makefile's TORCH_PINS,
#               which this resolution is constrained to
#
# Every lock pins exact versions with sha256 hashes (images install with --require-hashes) and
# holds markers for every platform (--universal), for the Python of the images' base (3.11).
set -euo pipefail
cd "$(dirname "$0")/../.."
UV=${UV:-uv}
: "${TORCH_PINS:?set TORCH_PINS to the torch pins of the Makefile, as make lock does}"
: "${DEV_EXTRAS:?set DEV_EXTRAS to the extras install-dev installs (a,b,c), as make lock does}"
given=("$@")
compile() {
    # ${given[@]+...}: an empty array under set -u, on the bash 3.2 of macOS too
    "$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes \
        --custom-compile-command "make lock" ${given[@]+"${given[@]}"} "$@"
}
compile pyproject.toml --extra serve --extra grpc --extra s3 -o deploy/locks/serve.txt
compile pyproject.toml --extra lambda -o deploy/locks/lambda.txt
compile deploy/locks/build.in -o deploy/locks/build.txt

# torch, torchvision and PyTorch's CUDA parts in a full resolution, as --no-emit-package flags
# in the array `exclude` (no mapfile: bash 3.2 has none).
exclude_heavy() {
    local name
    exclude=()
    for name in $(grep -oE '^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==' "$1" | tr -d '='); do
        exclude+=(--no-emit-package "$name")
    done
}
full=$(mktemp)
pins=$(mktemp)
trap 'rm -f "$full" "$pins"' EXIT

# The train resolution once in full, to read the torch versions and the CUDA-only packages; it
# starts from the current pins, so torch too stays where pyproject.toml still allows it.
cat deploy/locks/train-torch.txt deploy/locks/train.txt > "$full"
compile pyproject.toml --extra train --no-annotate --no-header -o "$full"
grep -E '^(torch|torchvision)==' "$full" | sed -E 's/ .*//; s/\\$//' > deploy/locks/train-torch.txt
exclude_heavy "$full"
compile pyproject.toml --extra train "${exclude[@]}" -o deploy/locks/train.txt

# The development and CI environment: every extra `make install-dev` installs, resolved against
# the Makefile's torch pins (both passed by `make lock`), without torch and its parts, as train.txt.
printf '%s\n' $TORCH_PINS > "$pins"
dev=()
for extra in ${DEV_EXTRAS//,/ }; do
    dev+=(--extra "$extra")
done
cp deploy/locks/dev.txt "$full" 2>/dev/null || : > "$full"
compile pyproject.toml "${dev[@]}" -c "$pins" --no-annotate --no-header -o "$full"
exclude_heavy "$full"
compile pyproject.toml "${dev[@]}" -c "$pins" "${exclude[@]}" -o deploy/locks/dev.txt
