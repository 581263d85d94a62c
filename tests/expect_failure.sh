#!/usr/bin/env bash
# expect_failure.sh [--count N] REGEX COMMAND...: passes when COMMAND exits non-zero and prints
# lines matching REGEX (at least N of them; default 1).
count=1
if [ "$1" = "--count" ]; then count="$2"; shift 2; fi
regex="$1"; shift
out="$("$@" 2>&1)"; rc=$?
echo "$out"
if [ "$rc" -eq 0 ]; then echo "expect_failure: command succeeded, expected a failure"; exit 1; fi
seen="$(grep -cE "$regex" <<<"$out")"
if [ "$seen" -lt "$count" ]; then echo "expect_failure: $seen lines match /$regex/, expected >= $count"; exit 1; fi
echo "expect_failure: failed as expected (exit $rc, $seen matching lines)"
