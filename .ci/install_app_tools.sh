#!/usr/bin/env bash
# Installs the toolchain the demo-app tests need (tests/test_kotlin_tokenizer.py, tests/test_swift_sources.py):
#   - kotlinc: the npm package kotlin-compiler (a full JVM Kotlin compiler; needs a JDK 17+ on PATH)
#   - tree-sitter + tree-sitter-swift: Python packages, already dependencies of the project (checked here)
# Idempotent: when the pinned version is already installed it only checks and exits (well under a second).
#
#   bash .ci/install_app_tools.sh            # installs into $PIPELINE_TOOLS_DIR or ~/.cache/pipeline/tools
#   export KOTLINC=$(bash .ci/install_app_tools.sh --print-kotlinc)   # optional: the tests also find it there
set -euo pipefail

KOTLIN_COMPILER_VERSION="2.4.20"
TOOLS_DIR="${PIPELINE_TOOLS_DIR:-$HOME/.cache/pipeline/tools}"
KOTLINC="$TOOLS_DIR/node_modules/kotlin-compiler/bin/kotlinc"
PYTHON="${PYTHON:-python3}"

installed_version() {
    [ -f "$TOOLS_DIR/node_modules/kotlin-compiler/package.json" ] || return 0
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$TOOLS_DIR/node_modules/kotlin-compiler/package.json" | head -n 1
}

if [ "${1:-}" = "--print-kotlinc" ]; then
    echo "$KOTLINC"
    exit 0
fi

if [ "$(installed_version)" != "$KOTLIN_COMPILER_VERSION" ] || [ ! -x "$KOTLINC" ]; then
    command -v npm >/dev/null || { echo "install_app_tools: npm is required to install kotlin-compiler" >&2; exit 1; }
    mkdir -p "$TOOLS_DIR"
    echo "install_app_tools: installing kotlin-compiler@$KOTLIN_COMPILER_VERSION into $TOOLS_DIR" >&2
    npm install --prefix "$TOOLS_DIR" --no-audit --no-fund --no-save "kotlin-compiler@$KOTLIN_COMPILER_VERSION" >&2
fi
[ -x "$KOTLINC" ] || { echo "install_app_tools: $KOTLINC missing after install" >&2; exit 1; }
command -v java >/dev/null || { echo "install_app_tools: java (JDK 17+) is required by kotlinc" >&2; exit 1; }

if ! "$PYTHON" -c "import tree_sitter, tree_sitter_swift" 2>/dev/null; then
    echo "install_app_tools: installing tree-sitter and tree-sitter-swift" >&2
    "$PYTHON" -m pip install --quiet "tree-sitter>=0.23" "tree-sitter-swift>=0.7"
fi

echo "install_app_tools: kotlinc $KOTLIN_COMPILER_VERSION at $KOTLINC; tree-sitter-swift ok" >&2
