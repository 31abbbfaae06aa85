#!/usr/bin/env bash
# Builds Horovod 0.28.1 into the virtual environment of PYTHON, against its TensorFlow:
#
#   tools/horovod/build.sh VENV/bin/python
#
# CPU build with Gloo; set HOROVOD_GPU_OPERATIONS=NCCL (and CUDA's paths) for GPUs, see README.
# 0.28.1 is Horovod's last release. With TensorFlow 2.19 or newer it is built from its source
# package with the patches in this folder applied (each says why); older TensorFlow builds it
# unchanged. Needs g++ and CMake; about 7 minutes on 2 cores.
set -euo pipefail
python=$1
here=$(cd "$(dirname "$0")" && pwd)
version=0.28.1

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1

tf_minor=$("$python" - <<'PY'
import importlib.metadata as metadata
for name in ('tensorflow-cpu', 'tensorflow', 'tensorflow-gpu', 'tensorflow-intel'):
    try:
        print(metadata.version(name).split('.')[1])
        break
    except metadata.PackageNotFoundError:
        continue
else:
    raise SystemExit('tools/horovod/build.sh: no TensorFlow in this environment; run `make venv` first')
PY
)

if [ "$tf_minor" -lt 19 ]; then
    "$python" -m pip install --quiet --no-build-isolation "horovod==$version"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "Horovod $version with TensorFlow 2.$tf_minor: building from source with tools/horovod/*.patch"
"$python" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "horovod==$version"
tar -xzf "$work/horovod-$version.tar.gz" -C "$work"
for patch_file in "$here"/*.patch; do
    patch --quiet --forward -p1 -d "$work/horovod-$version" < "$patch_file"
done
"$python" -m pip install --quiet --no-build-isolation "$work/horovod-$version"
