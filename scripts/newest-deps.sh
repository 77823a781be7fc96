#!/usr/bin/env bash
# Builds and lints the crate against the newest versions Cargo.toml allows,
# as a library user with a fresh lockfile would, so that an upstream
# deprecation or break is seen here before a user meets it. Cargo.lock is
# restored afterwards (the pinned versions stay what `cargo test` uses).
#
#   scripts/newest-deps.sh       # .ci/run runs it last
set -euo pipefail
cd "$(dirname "$0")/.."
backup="$(mktemp)"
cp Cargo.lock "$backup"
trap 'cp "$backup" Cargo.lock; rm -f "$backup"' EXIT
echo "newest-deps: against the pinned lockfile:"
cargo update 2>&1 | grep -E '^ *(Updating|Adding|Removing|Downgrading) ' || echo "  nothing newer"
cargo clippy --all-targets --quiet -- -D warnings
echo "newest-deps: clean with the newest compatible versions"
