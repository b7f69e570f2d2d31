#!/usr/bin/env bash
# Fetches FastChat's MT-bench data (question.jsonl, judge_prompts.jsonl,
# reference_answer/gpt-4.jsonl and FastChat's Apache-2.0 LICENSE) at a pinned commit from
# GitHub into DIR (default ~/.cache/camelid/mt_bench), each file checked by sha256, and
# prints DIR: the folder `camelid mtbench --data` and the MT-bench tests
# (`CAMELID_MT_BENCH_DATA`) read. Files already there with the right sha256 are kept.
#   bash tests/fetch-mt-bench.sh [DIR]
set -euo pipefail
CACHE="${CAMELID_CACHE:-$HOME/.cache/camelid}"
DIR="${1:-$CACHE/mt_bench}"
COMMIT=0e6d3e4beaab66f4d3f93db72541a4abab8af28d
BASE="https://raw.githubusercontent.com/lm-sys/FastChat/$COMMIT"
# destination  source path in FastChat  sha256
FILES=(
  "question.jsonl fastchat/llm_judge/data/mt_bench/question.jsonl 119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"
  "judge_prompts.jsonl fastchat/llm_judge/data/judge_prompts.jsonl fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6"
  "reference_answer/gpt-4.jsonl fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f"
  "LICENSE-FastChat LICENSE -"
)
mkdir -p "$DIR/reference_answer"
for f in "${FILES[@]}"; do
  read -r dest src sha <<<"$f"
  if [ "$sha" != - ] && [ -f "$DIR/$dest" ] && echo "$sha  $DIR/$dest" | sha256sum -c --status; then
    continue
  fi
  [ "$sha" = - ] && [ -f "$DIR/$dest" ] && continue
  tmp="$DIR/$dest.part"
  curl -fsSL --retry 3 -o "$tmp" "$BASE/$src" || {
    echo "fetch-mt-bench.sh: could not download $BASE/$src" >&2; rm -f "$tmp"; exit 1; }
  if [ "$sha" != - ] && ! echo "$sha  $tmp" | sha256sum -c --status; then
    echo "fetch-mt-bench.sh: sha256 mismatch for $src" >&2; rm -f "$tmp"; exit 1
  fi
  mv "$tmp" "$DIR/$dest"
done
echo "$DIR"
