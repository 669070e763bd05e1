#!/usr/bin/env bash
# Bounded fuzz run for CI: each cargo-fuzz target (fuzz/fuzz_targets/) for FUZZ_SECS seconds
# (20 by default), built without a sanitizer (FUZZ_SANITIZER=address for AddressSanitizer: the
# code under test is safe Rust, and CI's 15 minutes are better spent on executions), starting from the committed seeds (fuzz/seeds/T) and the local working
# corpus (fuzz/corpus/T, git-ignored). Needs the nightly toolchain; without it, says so and
# passes. Any crash, panic, failed assertion, leak or timeout fails the run (non-zero exit);
# libFuzzer writes the input that did it under fuzz/artifacts/T/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${FUZZ_SECS:-20}"
SANITIZER="${FUZZ_SANITIZER:-none}"
TARGETS=(frame interests sequence)

if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -q nightly; then
  echo "== fuzz: SKIPPED, no nightly toolchain"
  exit 0
fi

started=$(date +%s)
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "== fuzz: building ${TARGETS[*]} (nightly, release, sanitizer: $SANITIZER)"
cargo +nightly fuzz build --sanitizer "$SANITIZER"
built=$(date +%s)
echo "== fuzz: built in $((built - started)) s"

failed=()
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log="$(mktemp)"
  echo "== fuzz: $target for ${SECS} s"
  # -timeout: one input taking over 10 s is a hang, and a failure.
  if cargo +nightly fuzz run --sanitizer "$SANITIZER" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
      -max_total_time="$SECS" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    # The last status line (executions, coverage, features, corpus) and the execution count.
    grep -E '^#[0-9]+' "$log" | tail -n 1 || true
    grep -E 'stat::number_of_executed_units' "$log" || true
  else
    echo "== fuzz: $target FAILED"
    # What failed (a panic's message, or the sanitizer's report), then the end of the log:
    # the input as bytes and Base64, and how to reproduce it.
    grep -E -A4 "panicked at|^==[0-9]+==ERROR" "$log" | head -n 20 || true
    echo "-- the end of its log:"
    grep -v -E '^ +#[0-9]+ 0x' "$log" | tail -n 40
    failed+=("$target")
  fi
  rm -f "$log"
done

echo "== fuzz: done in $(($(date +%s) - started)) s"
if ((${#failed[@]})); then
  echo "== fuzz: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "== fuzz: passed, no crash in ${TARGETS[*]}"
