#!/usr/bin/env bash
# Install the pgvector extension into the newest local PostgreSQL server (Debian), for the pgvector
# index backend and its tests. Debian 12 packages no pgvector binary (Debian 13 does:
# postgresql-17-pgvector), so this builds Debian's own pgvector source release, checked against its
# SHA-256, with the server's development headers. Needs root (apt-get, make install); does nothing
# when the extension is already installed. Usage: bash scripts/install_pgvector.sh
set -euo pipefail
VERSION=0.8.0
SHA256=867a2c328d4928a5a9d6f052cd3bc78c7d60228a9b914ad32aa3db88e9de27b0
URL=https://deb.debian.org/debian/pool/main/p/pgvector/pgvector_${VERSION}.orig.tar.gz

BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
MAJOR=$(basename "$(dirname "$BIN")")
if [ -f "/usr/share/postgresql/$MAJOR/extension/vector.control" ]; then
  exit 0
fi
if [ ! -x "$BIN/pg_config" ] || ! command -v make >/dev/null || ! command -v gcc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-server-dev-$MAJOR" build-essential >/dev/null
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
curl -fsSL --retry 3 -o "$WORK/pgvector.tar.gz" "$URL"
echo "$SHA256  $WORK/pgvector.tar.gz" | sha256sum --check --quiet
tar -xzf "$WORK/pgvector.tar.gz" -C "$WORK"
# OPTFLAGS= : no -march=native, so the library runs on any x86-64 machine the folder is copied to;
# with_llvm=no: no JIT bitcode (it would need clang).
make -s -C "$WORK/pgvector-$VERSION" PG_CONFIG="$BIN/pg_config" OPTFLAGS= with_llvm=no >/dev/null
make -s -C "$WORK/pgvector-$VERSION" PG_CONFIG="$BIN/pg_config" OPTFLAGS= with_llvm=no install >/dev/null
echo "pgvector $VERSION installed for PostgreSQL $MAJOR" >&2
