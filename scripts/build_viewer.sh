#!/usr/bin/env bash
# Rebuild the review app's study viewer, ui/static/viewer.js.gz (committed gzipped, under 2 MiB: the app and its tests need no npm),
# from ui/viewer_js/src/viewer.js and the Cornerstone3D packages pinned in ui/viewer_js/package-lock.json.
# Needs Node.js 20+ and npm (Debian: apt install nodejs npm). node_modules stays in ui/viewer_js/ (ignored).
set -euo pipefail
cd "$(dirname "$0")/../ui/viewer_js"
npm ci --no-audit --no-fund --loglevel=error
npx --no-install esbuild src/viewer.js --bundle --minify --format=iife --target=es2020 \
  --alias:events=./src/node-builtins.js --alias:url=./src/node-builtins.js --legal-comments=eof --log-level=warning --outfile=../static/viewer.js
gzip -n -9 -f ../static/viewer.js  # -n: no name or time in the header, so a rebuild is byte for byte
ls -l ../static/viewer.js.gz
