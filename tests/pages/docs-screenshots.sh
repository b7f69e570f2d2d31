#!/usr/bin/env bash
# Refreshes the README's pictures of the pages (docs/screenshots/) from the ones the browser
# test leaves in <target>/screenshots, quantized to 64 colours by pngquant (Debian's
# `pngquant`) to keep each under 100 KB. Run the browser test first:
#   cargo test --workspace --test pages_browser
set -euo pipefail
cd "$(dirname "$0")/../.."
SRC="${CARGO_TARGET_DIR:-target}/screenshots"
mkdir -p docs/screenshots
for page in chat arena leaderboard; do
  for width in desktop phone; do
    f="$page-$width.png"
    pngquant --force --strip --quality 60-90 64 --output "docs/screenshots/$f" "$SRC/$f"
    size=$(stat -c %s "docs/screenshots/$f")
    [ "$size" -lt 102400 ] || { echo "docs/screenshots/$f is $size bytes (over 100 KB)" >&2; exit 1; }
  done
done
ls -l docs/screenshots
