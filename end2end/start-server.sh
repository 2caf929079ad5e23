#!/bin/sh
# Starts a throwaway Keystone for the browser tests: a fresh data directory, two teams and one
# user per role, then the server in the foreground (Playwright stops it when the run ends).
set -eu
BIN="${KEYSTONE_BIN:?set KEYSTONE_BIN to the keystone binary}"
export KEYSTONE_DATA_DIR="${KEYSTONE_DATA_DIR:-$(dirname "$0")/.data}"
rm -rf "$KEYSTONE_DATA_DIR"
mkdir -p "$KEYSTONE_DATA_DIR"
unset KEYSTONE_DATABASE_URL
"$BIN" admin create-team --name alpha --description "Team alpha"
"$BIN" admin create-team --name beta --description "Team beta"
echo "admin-password-1" | "$BIN" admin create-user --username admin --role admin --team alpha
echo "editor-password-1" | "$BIN" admin create-user --username alice --role editor --team alpha
echo "viewer-password-1" | "$BIN" admin create-user --username vera --role viewer --team alpha
exec "$BIN" serve
