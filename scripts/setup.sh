#!/usr/bin/env bash
# Create (or reuse) the project's virtualenv and install nextlat_probe into it.
#
# Why the special torch step: a bare `torch` requirement on a machine without torch pulls a
# multi-GB CUDA build. Without a GPU we install the CPU build first (torch==2.13.0, or
# $NEXTLAT_TORCH_SPEC), so the later `pip install -e .` finds torch already satisfied.
# With a GPU, a torch the user already has is kept; otherwise pip picks its default build.
#
# Environment:
#   NEXTLAT_VENV        virtualenv path (default: .venv in the repository)
#   NEXTLAT_PYTHON      interpreter used to create it (default: python3.11, else python3)
#   NEXTLAT_TORCH_SPEC  torch requirement for CPU machines (default: torch==2.13.0);
#                       add e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
#                       on machines where PyPI's default torch is a CUDA build.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${NEXTLAT_VENV:-$root/.venv}"
extras="${1:-dev}"  # extras of nextlat_probe to install, a comma list (make lab: dev,notebooks)

if [ ! -x "$venv/bin/python" ]; then
    py="${NEXTLAT_PYTHON:-$(command -v python3.11 || command -v python3)}"
    echo "[setup] creating virtualenv $venv with $py" >&2
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# Re-install only when the project's requirements changed or an extra is not installed yet
# (the stamp names the extras installed: `make lab` adds notebooks, `make test` keeps them).
hash="$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
for old in "$venv"/.nextlat_setup_"$hash"_*; do
    [ -f "$old" ] || continue
    have=",${old##*_"$hash"_},"
    missing=""
    for e in ${extras//,/ }; do
        case "$have" in *",$e,"*) ;; *) missing=1 ;; esac
    done
    [ -z "$missing" ] && exit 0
    extras="${have:1:${#have}-2},$extras"  # keep what is installed, add what is asked
done
extras="$(echo "$extras" | tr ',' '\n' | awk 'NF && !seen[$0]++' | paste -sd, -)"
stamp="$venv/.nextlat_setup_${hash}_$extras"

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] GPU found: installing torch (default build)" >&2
        "${pip[@]}" install torch
    else
        echo "[setup] no GPU: installing CPU torch (${NEXTLAT_TORCH_SPEC:-torch==2.13.0})" >&2
        "${pip[@]}" install "${NEXTLAT_TORCH_SPEC:-torch==2.13.0}"
    fi
fi
echo "[setup] installing nextlat_probe[$extras]" >&2
"${pip[@]}" install -e ".[$extras]"
rm -f "$venv"/.nextlat_setup_*
touch "$stamp"
