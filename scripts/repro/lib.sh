# Shared by the scripts/repro runners (source it).
# finished DIR: the run in DIR logged its final evaluation (an "eval" event after step 0), so a
# runner skips it; an unfinished one is started again with resume=auto and continues.
finished() {
  [ -f "$1/metrics.jsonl" ] && grep -qE '"step": [1-9][0-9]*, "event": "eval"' "$1/metrics.jsonl"
}
