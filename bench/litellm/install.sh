#!/bin/sh
# LiteLLM's proxy in a virtualenv of its own, for bench/side_by_side.py --litellm VENV.
# Pinned to one exact version: LiteLLM 1.82.7 and 1.82.8 were published with a credential
# stealer in them; never install those, and read the changelog before moving the pin.
# The virtualenv is not committed (default: bench/litellm/.venv, git-ignored).
set -eu
VERSION=1.108.7
case "$VERSION" in 1.82.7 | 1.82.8) echo "refusing LiteLLM $VERSION" >&2; exit 1 ;; esac
HERE=$(cd "$(dirname "$0")" && pwd)
VENV=${1:-$HERE/.venv}
UV=${UV:-$HERE/../../.tools/bin/uv}
"$UV" venv --quiet --python 3.11 "$VENV"
"$UV" pip install --quiet --python "$VENV" "litellm[proxy]==$VERSION"
echo "LiteLLM $VERSION in $VENV: uv run python bench/side_by_side.py --litellm $VENV"
