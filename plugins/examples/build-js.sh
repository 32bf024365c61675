#!/usr/bin/env bash
# Builds the JavaScript version of the greeting plugin (js-greeting/) into a component
# with componentize-js, into dist/js/js_greeting.wasm (about 12 MiB: it embeds the
# StarlingMonkey JS engine). Needs Node 20+ and the npm registry for the first run.
#
#   plugins/examples/build-js.sh
#
# Skips npm and the build when nothing they depend on changed.
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
js_dir="$examples_dir/js-greeting"
wit="$examples_dir/../../wit/mailing-plugin.wit"
out="$examples_dir/dist/js/js_greeting.wasm"

cd "$js_dir"
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json ]]; then
    npm ci --no-audit --no-fund
fi

stale=0
[[ -f "$out" ]] || stale=1
for input in greeting.js componentize.mjs package-lock.json "$wit"; do
    [[ "$input" -nt "$out" ]] && stale=1
done
if [[ $stale -eq 1 ]]; then
    node componentize.mjs "$out"
fi

header="$(head -c 8 "$out" | od -An -tx1 | tr -d ' \n')"
if [[ "$header" != 0061736d0d000100 ]]; then
    echo "build-js.sh: $out is not a component (header $header)" >&2
    exit 1
fi
awk -v f="dist/js/js_greeting.wasm" -v s="$(wc -c <"$out")" \
    'BEGIN { printf "%-28s %9d bytes %7.1f KiB  component\n", f, s, s / 1024 }'
