#!/bin/sh
# Generate ./configure from configure.ac (needs autoconf, automake, libtool).
set -e
cd "$(dirname "$0")"
mkdir -p config
autoreconf --force --verbose --install
echo "Now run ./configure."
