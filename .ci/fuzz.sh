#!/usr/bin/env bash
# Fuzzes the two parsers that take untrusted bytes, with cargo-fuzz/libFuzzer:
#   spool_file       cdrhook::cdr::parse_file            (spool files)
#   control_request  cdrhook::control::protocol::parse   (control socket lines)
#
# Usage: .ci/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  run time per target (default 60)
#   TARGET   which targets (default: all of fuzz/fuzz_targets/*.rs)
# Environment:
#   FUZZ_SANITIZER  address (default) | none | ...  (cargo fuzz --sanitizer)
#   FUZZ_ARGS       extra libFuzzer flags, e.g. "-max_len=65536 -jobs=2"
#
# Run by hand; it is NOT part of .ci/run (CI's time budget). Each target
# starts from its committed seeds in fuzz/seeds/TARGET/ and keeps what it
# finds in fuzz/corpus/TARGET/ (git-ignored), so later runs resume from
# there. A crash leaves its input in fuzz/artifacts/TARGET/ and makes this
# script exit 1 after the remaining targets have run; reproduce it with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...
# and add it to tests/it/fuzz_regressions.rs.
#
# cargo-fuzz passes -Z flags to rustc, which a stable toolchain refuses;
# RUSTC_BOOTSTRAP=1 lets stable accept them (no nightly needed).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
export RUSTC_BOOTSTRAP=1

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
  echo "usage: $0 [SECONDS] [TARGET...]   (SECONDS: a positive whole number)" >&2
  exit 2
fi
shift || true
sanitizer=${FUZZ_SANITIZER:-address}
read -r -a extra_args <<<"${FUZZ_ARGS:-}"

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
  done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz (cargo install --locked cargo-fuzz)"
  cargo install --locked cargo-fuzz
fi
echo "== $(cargo fuzz --version), $(rustc --version), sanitizer: $sanitizer"

echo "== cargo fuzz build --sanitizer $sanitizer"
if ! cargo fuzz build --sanitizer "$sanitizer"; then
  if [ "$sanitizer" = none ]; then
    exit 1
  fi
  echo "fuzz.sh: the build with --sanitizer $sanitizer failed; retrying with --sanitizer none" >&2
  sanitizer=none
  cargo fuzz build --sanitizer none
fi

failed=()
summary=()
for target in "${targets[@]}"; do
  seeds=fuzz/seeds/$target
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus"
  log=$(mktemp)
  echo "== fuzzing $target for ${seconds}s (corpus $corpus, seeds $seeds)"
  # The first directory is the one libFuzzer writes new inputs to; the seeds
  # are only read.
  set +e
  cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -print_final_stats=1 "${extra_args[@]}" 2>&1 |
    tee "$log" | grep --line-buffered -E '^(#[0-9]+[[:space:]]+(INITED|DONE|pulse)|Done |==[0-9]+==|SUMMARY|thread .* panicked|stat::)' 
  rc=${PIPESTATUS[0]}
  set -e
  runs=$(grep -Eo '^stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
  rate=$(grep -Eo '^stat::average_exec_per_sec:[[:space:]]+[0-9]+' "$log" | grep -Eo '[0-9]+$' || true)
  if [ "$rc" -ne 0 ]; then
    echo "!! $target: exit $rc; the last lines of its output:"
    tail -n 40 "$log"
    if grep -q 'panicked at' "$log"; then
      echo "!! $target: the panic:"
      grep -A3 'panicked at' "$log"
    fi
    failed+=("$target")
    summary+=("$target: FAILED (exit $rc); see fuzz/artifacts/$target/")
  else
    summary+=("$target: ok, ${runs:-?} executions in ${seconds}s (${rate:-?}/s)")
  fi
  rm -f "$log"
done

echo "== summary"
printf '   %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: crash or failure in: ${failed[*]}" >&2
  exit 1
fi
