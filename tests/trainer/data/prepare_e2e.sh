#!/usr/bin/env bash
# moe-prepare at scale, end to end, on Debian's fortunes (plain text, 40 files) and a JSONL made of
# them: the shards are byte-identical for 1, 2 and 4 workers; a run killed (SIGKILL) after the
# tokenizer, at checkpoints and between them, re-run with the same command (and another number of
# workers), resumes and ends byte-identical to an uninterrupted run, leaving an earlier output alone
# while it is interrupted; another command starts over; the memory stays flat as the corpus grows
# four times past the workers' queues; under mpiexec, 2 and 3 ranks write the single process's data
# set, also after a kill and a resume (with the same or another number of ranks).
# Usage: prepare_e2e.sh BIN_DIR MPIEXEC...
set -euo pipefail
bin="$1"; shift
mpi=("$@")
tmp="$(mktemp -d)"; trap '[ -n "${KEEP:-}" ] || rm -rf "$tmp"' EXIT
corpus=${MOE_FORTUNES_DIR:-/usr/share/games/fortunes}
[ -d "$corpus" ] || { echo "e2e: $corpus missing (launch/setup.sh installs Debian's fortunes)"; exit 1; }
fail() { echo "e2e: FAILED: $*"; exit 1; }

# A JSONL of the fortunes (one per line), then the plain files: both readers in one run.
python3 - "$corpus" "$tmp/fortunes.jsonl" <<'PY'
import json, os, sys
src, out = sys.argv[1], sys.argv[2]
with open(out, "w", encoding="utf-8") as f:
    for name in sorted(os.listdir(src))[:12]:
        path = os.path.join(src, name)
        if os.path.islink(path) or name.endswith(".dat"):
            continue
        for text in open(path, encoding="utf-8", errors="replace").read().split("\n%\n"):
            if text.strip():
                f.write(json.dumps({"text": text}) + "\n")
PY
inputs=(--input "$tmp/fortunes.jsonl" "$corpus" --separator %)
common=(--vocab_size 600 --val_fraction 0.05 --shard_tokens 40000 --batch_kb 8 --threads 2 --quiet)
prepare() {  # prepare OUT LOG [options...]
  local out="$1" log="$2"; shift 2
  "$bin/moe-prepare" "${inputs[@]}" "${common[@]}" --out_dir "$out" "$@" > "$log" 2>&1
}
same() {  # same A B: every output file but the run's own summary
  local a="$1" b="$2" f
  [ "$(cd "$a" && ls)" = "$(cd "$b" && ls)" ] || fail "$b holds other files than $a: $(ls "$b")"
  for f in "$a"/*; do
    [ "$(basename "$f")" = prepare.json ] && continue
    cmp -s "$f" "$b/$(basename "$f")" || fail "$b/$(basename "$f") differs from $a's"
  done
}
summary() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1/prepare.json" "$2"; }

prepare "$tmp/w1" "$tmp/w1.log" --workers 1 || fail "$(tail -5 "$tmp/w1.log")"
shards=$(summary "$tmp/w1" train_shards)
documents=$(summary "$tmp/w1" documents)
[ "$shards" -ge 8 ] || fail "only $shards training shards: the resume points below need more"
for w in 2 4; do
  prepare "$tmp/w$w" "$tmp/w$w.log" --workers $w || fail "$(tail -5 "$tmp/w$w.log")"
  same "$tmp/w1" "$tmp/w$w"
  [ "$(summary "$tmp/w$w" workers | tr -cd '{' | wc -c)" = "$w" ] || fail "prepare.json lacks the $w workers' figures"
done
grep -q "encoding on 4 workers with SentencePiece" "$tmp/w4.log" || fail "the log does not say how it encodes"
echo "e2e: 1, 2 and 4 workers wrote identical shards ($shards training shards, $documents documents)"

# Under mpiexec: the ranks split the corpus (at files and JSONL lines) into one data set.
for n in 2 3; do
  "${mpi[@]}" -n $n "$bin/moe-prepare" "${inputs[@]}" "${common[@]}" --workers 1 --out_dir "$tmp/np$n" \
    > "$tmp/np$n.log" 2>&1 || fail "mpiexec -n $n: $(tail -5 "$tmp/np$n.log")"
  same "$tmp/w1" "$tmp/np$n"
done
grep -q "joining the 3 ranks' parts" "$tmp/np3.log" || fail "rank 0 did not say it joins the parts"
out="$tmp/np_killed"
if MOE_PREPARE_FAULT=documents:1500 "${mpi[@]}" -n 2 "$bin/moe-prepare" "${inputs[@]}" "${common[@]}" --workers 1 \
    --out_dir "$out" > "$tmp/np_killed.log" 2>&1; then fail "mpiexec -n 2: the ranks should have died"; fi
ls "$out/.prepare.tmp"/part-*-of-2/chunk-00000.bin > /dev/null || fail "the killed ranks left no parts to resume"
"${mpi[@]}" -n 2 "$bin/moe-prepare" "${inputs[@]}" "${common[@]}" --workers 2 --out_dir "$out" > "$tmp/np_resumed.log" 2>&1 ||
  fail "the resumed mpiexec -n 2: $(tail -5 "$tmp/np_resumed.log")"
grep -q "resuming this rank's part" "$tmp/np_resumed.log" || fail "the ranks did not resume their parts"
same "$tmp/w1" "$out"
# A malformed line in rank 1's range: every rank stops, the error names the file and line.
{ cat "$tmp/fortunes.jsonl"; echo '{"text": oops}'; } > "$tmp/bad.jsonl"
bad_line=$(wc -l < "$tmp/bad.jsonl")
if timeout 120 "${mpi[@]}" -n 2 "$bin/moe-prepare" --input "$tmp/bad.jsonl" "${common[@]}" --tokenizer "$tmp/w1/tokenizer.model" \
    --out_dir "$tmp/np_bad" > "$tmp/np_bad.log" 2>&1; then fail "mpiexec -n 2 took a malformed line"; fi
grep -q "bad.jsonl:$bad_line: malformed JSONL line" "$tmp/np_bad.log" || fail "the error does not name the line: $(tail -5 "$tmp/np_bad.log")"
echo "e2e: mpiexec -n 2 and -n 3 wrote the single process's shards; killed and resumed: identical; an error stops every rank"

# Kill at several points; the same command resumes (with another number of workers).
cp -r "$tmp/w1" "$tmp/earlier"
for point in tokenizer journal:1 journal:4 documents:1 documents:$((documents / 3)) documents:$((documents - 1)); do
  out="$tmp/killed"; rm -rf "$out"; cp -r "$tmp/earlier" "$out"
  if MOE_PREPARE_FAULT="$point" prepare "$out" "$tmp/killed.log" --workers 2 2> /dev/null; then
    fail "$point: the run should have died"
  fi
  [ -d "$out/.prepare.tmp" ] || fail "$point: the kill left nothing to resume from"
  (cd "$out" && ls | grep -v '^prepare.json$') > "$tmp/names"
  for f in $(cat "$tmp/names"); do cmp -s "$tmp/earlier/$f" "$out/$f" || fail "$point: the kill changed the earlier output's $f"; done
  prepare "$out" "$tmp/resumed.log" --workers 3 || fail "$point: the resumed run failed: $(tail -5 "$tmp/resumed.log")"
  case "$point" in tokenizer) ;; *) grep -q "resuming the interrupted run" "$tmp/resumed.log" || fail "$point: did not resume" ;; esac
  [ "$(summary "$out" resumed)" = True ] || fail "$point: prepare.json does not say it resumed"
  same "$tmp/w1" "$out"
  [ ! -e "$out/.prepare.tmp" ] || fail "$point: the staging directory was left behind"
  echo "e2e: killed at $point, resumed: identical"
done

# A killed run and then another command (here: --skip_malformed, which changes nothing else): it
# starts over.
out="$tmp/other"
if MOE_PREPARE_FAULT=journal:2 prepare "$out" "$tmp/other.log" --workers 2 2> /dev/null; then fail "the run should have died"; fi
prepare "$out" "$tmp/other.log" --workers 2 --skip_malformed || fail "$(tail -5 "$tmp/other.log")"
grep -q "of another command or other inputs: starting over" "$tmp/other.log" || fail "another command did not start over"
[ "$(summary "$out" resumed)" = False ] || fail "another command resumed"
same "$tmp/w1" "$out"
echo "e2e: another command after a kill started over"

# Memory: flat from a corpus to four times it, both far past the queues (2 workers x 4 batches of 8 KB).
python3 - "$tmp/fortunes.jsonl" "$tmp/small.jsonl" "$tmp/large.jsonl" <<'PY'
import sys
lines = open(sys.argv[1], encoding="utf-8").read().splitlines(keepends=True)
for path, megabytes in ((sys.argv[2], 12), (sys.argv[3], 48)):
    with open(path, "w", encoding="utf-8") as f:
        written, k = 0, 0
        while written < megabytes << 20:
            line = lines[k % len(lines)]
            f.write(line)
            written += len(line.encode())
            k += 1
PY
for size in small large; do
  "$bin/moe-prepare" --input "$tmp/$size.jsonl" --tokenizer "$tmp/w1/tokenizer.model" --workers 2 --batch_kb 8 \
    --val_fraction 0 --out_dir "$tmp/$size" --quiet > "$tmp/$size.log" 2>&1 || fail "$(cat "$tmp/$size.log")"
done
small=$(summary "$tmp/small" peak_resident_bytes) large=$(summary "$tmp/large" peak_resident_bytes)
echo "e2e: peak resident memory $((small >> 20)) MiB for 12 MB of text, $((large >> 20)) MiB for 48 MB"
[ $((large - small)) -lt $((12 << 20)) ] || fail "the memory grew with the corpus: $small -> $large bytes"
echo "e2e: passed"
