#!/usr/bin/env bash
# Builds and installs learn2learn 0.2.0 (its last release) into the given Python environment.
#
# Why: the sdist ships Cython-generated C files that do not compile on Python >= 3.11
# (`longintrepr.h: No such file or directory`, learnables/learn2learn#413). Its .pyx sources are in the
# sdist, so we regenerate the C with Cython 3 and build a wheel. It is installed without its declared
# dependencies: qpth pins numpy<2 and gsutil drags in a cloud SDK; `import learn2learn` needs only
# gym, scipy, requests and tqdm, which pyproject.toml declares. The wheel is cached, so reruns take seconds.
set -euo pipefail
PYTHON=${1:-python}
VERSION=0.2.0
if "$PYTHON" -c "import learn2learn" >/dev/null 2>&1; then
    exit 0
fi
cache_dir=${FSL_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fsl_lightning/wheels}
mkdir -p "$cache_dir"
wheel=$(ls "$cache_dir"/learn2learn-$VERSION-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    echo "Building learn2learn $VERSION from its sdist with Cython 3 (about a minute)..."
    "$PYTHON" -m pip install -q "cython>=3" setuptools wheel
    # --no-binary for learn2learn alone: for all, pip would also build its build tools (Cython) from source
    "$PYTHON" -m pip download -q --no-deps --no-binary learn2learn "learn2learn==$VERSION" -d "$work"
    tar -xzf "$work/learn2learn-$VERSION.tar.gz" -C "$work"
    src="$work/learn2learn-$VERSION"
    rm -f "$src"/learn2learn/data/*.c
    "$PYTHON" -m cython -3 "$src"/learn2learn/data/*.pyx
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$cache_dir" "$src"
    wheel=$(ls "$cache_dir"/learn2learn-$VERSION-*.whl | head -n 1)
fi
"$PYTHON" -m pip install -q --no-deps "$wheel"
"$PYTHON" -c "import learn2learn; print('learn2learn', learn2learn.__version__, 'installed')"
