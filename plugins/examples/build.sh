#!/usr/bin/env bash
# Builds the example plugins (every cdylib crate of this workspace) for wasm32-wasip2 and
# copies the components into dist/.
#
#   plugins/examples/build.sh
#
# WASM_TARGET_DIR: cargo's target directory (default: plugins/examples/target).
# Safe to run again: cargo rebuilds only what changed, and dist/ files are replaced only
# when their bytes differ (their mtime stays put otherwise).
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=wasm32-wasip2
target_dir="${WASM_TARGET_DIR:-$examples_dir/target}"
dist_dir="$examples_dir/dist"

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx "$target"; then
        echo "build.sh: installing the $target target" >&2
        rustup target add "$target"
    fi
fi

# Flags meant for the host's build (a linker, a target CPU) must not reach the wasm build,
# and a change in them would rebuild everything.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS

cargo_args=(build --manifest-path "$examples_dir/Cargo.toml" --workspace --release
    --target "$target" --target-dir "$target_dir")
if [[ -f "$examples_dir/Cargo.lock" ]]; then
    cargo_args+=(--locked)
fi
cargo "${cargo_args[@]}"
# std-greeting (the author's guide plugin, with std) is a workspace of its own.
std_args=(build --manifest-path "$examples_dir/std-greeting/Cargo.toml" --release
    --target "$target" --target-dir "$target_dir")
if [[ -f "$examples_dir/std-greeting/Cargo.lock" ]]; then
    std_args+=(--locked)
fi
cargo "${std_args[@]}"

# The file each cdylib crate produces: its package name with `-` replaced by `_`.
wasm_names=()
for manifest in "$examples_dir"/*/Cargo.toml; do
    if grep -q '^crate-type = \["cdylib"\]' "$manifest"; then
        name="$(sed -n 's/^name = "\(.*\)"$/\1/p' "$manifest" | head -n 1)"
        wasm_names+=("${name//-/_}.wasm")
    fi
done
if [[ ${#wasm_names[@]} -eq 0 ]]; then
    echo "build.sh: no cdylib crate found in $examples_dir" >&2
    exit 1
fi

mkdir -p "$dist_dir"
# Drop what no crate produces any more.
for old in "$dist_dir"/*.wasm; do
    [[ -e "$old" ]] || continue
    keep=0
    for file in "${wasm_names[@]}"; do
        [[ "$(basename "$old")" == "$file" ]] && keep=1
    done
    if [[ $keep -eq 0 ]]; then
        rm -f "$old"
    fi
done

failed=0
for file in "${wasm_names[@]}"; do
    built="$target_dir/$target/release/$file"
    if [[ ! -f "$built" ]]; then
        echo "build.sh: $built was not produced" >&2
        failed=1
        continue
    fi
    # Bytes 0..4 are the magic `\0asm`; bytes 4..8 are `0d 00 01 00` for a component
    # (version 0x0d, layer 1) and `01 00 00 00` for a core module.
    header="$(head -c 8 "$built" | od -An -tx1 | tr -d ' \n')"
    if [[ "$header" == 0061736d0d000100 ]]; then
        kind=component
    elif [[ "$header" == 0061736d01000000 ]]; then
        kind="CORE MODULE (not a component)"
        failed=1
    else
        kind="NOT WASM (header $header)"
        failed=1
    fi
    if [[ $kind == component ]] && ! cmp -s "$built" "$dist_dir/$file"; then
        cp "$built" "$dist_dir/$file"
    fi
    awk -v f="dist/$file" -v s="$(wc -c <"$built")" -v k="$kind" \
        'BEGIN { printf "%-28s %9d bytes %7.1f KiB  %s\n", f, s, s / 1024, k }'
done

if [[ $failed -ne 0 ]]; then
    echo "build.sh: some outputs are missing or not components" >&2
    exit 1
fi
