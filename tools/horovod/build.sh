#!/usr/bin/env bash
# Builds Horovod 0.28.1 into the virtual environment of PYTHON, against its TensorFlow:
#
#   tools/horovod/build.sh VENV/bin/python
#
# CPU build with Gloo; set HOROVOD_GPU_OPERATIONS=NCCL (and CUDA's paths) for GPUs, see README.
# 0.28.1 is Horovod's last release. It is built from its source package; with TensorFlow 2.19
# or newer the patches in this folder are applied first (each says why). Needs g++ and CMake;
# about 7 minutes on 2 cores. The wheel is kept in HOROVOD_WHEEL_CACHE (default
# ~/.cache/frcnn-horovod) under a name that holds every input of the build (Horovod, Python and
# TensorFlow versions, build switches, patches), so a second venv of the same stack installs it
# in seconds and a change of any input builds anew.
set -euo pipefail
python=$1
here=$(cd "$(dirname "$0")" && pwd)
version=0.28.1

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1

read -r python_version tf_version < <("$python" - <<'PY'
import importlib.metadata as metadata
import sys
for name in ('tensorflow-cpu', 'tensorflow', 'tensorflow-gpu', 'tensorflow-intel'):
    try:
        print('%d.%d' % sys.version_info[:2], metadata.version(name))
        break
    except metadata.PackageNotFoundError:
        continue
else:
    raise SystemExit('tools/horovod/build.sh: no TensorFlow in this environment; run `make venv` first')
PY
)
tf_minor=$(echo "$tf_version" | cut -d. -f2)
patches=()
if [ "$tf_minor" -ge 19 ]; then
    patches=("$here"/*.patch)
fi

inputs=$( { echo "$version $python_version $tf_version"; env | grep '^HOROVOD_' | sort;
            for p in "${patches[@]}"; do cat "$p"; done; } | sha256sum | cut -c1-16)
cache=${HOROVOD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frcnn-horovod}/$inputs
if ! ls "$cache"/horovod-*.whl >/dev/null 2>&1; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "Building Horovod $version for Python $python_version, TensorFlow $tf_version (${#patches[@]} patch(es))"
    "$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "horovod==$version"
    tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
    for patch_file in "${patches[@]}"; do
        patch --quiet --forward -p1 -d "$work/horovod-$version" < "$patch_file"
    done
    "$python" -m pip wheel --quiet --no-deps --no-build-isolation -w "$work/wheel" "$work/horovod-$version"
    mkdir -p "$(dirname "$cache")"
    rm -rf "$cache.tmp.$$" && mv "$work/wheel" "$cache.tmp.$$"
    mv -T "$cache.tmp.$$" "$cache" 2>/dev/null || rm -rf "$cache.tmp.$$"   # another build may have won
fi
"$python" -m pip install --quiet "$cache"/horovod-*.whl
