#!/usr/bin/env bash
# Rebuild the review app's study viewer, ui/static/viewer.js (committed: the app and its tests need no npm),
# from ui/viewer_js/src/viewer.js and the Cornerstone3D packages pinned in ui/viewer_js/package-lock.json.
# Needs Node.js 20+ and npm (Debian: apt install nodejs npm). node_modules stays in ui/viewer_js/ (ignored).
set -euo pipefail
cd "$(dirname "$0")/../ui/viewer_js"
npm ci --no-audit --no-fund --loglevel=error
npx --no-install esbuild src/viewer.js --bundle --minify --format=iife --target=es2020 \
  --alias:events=./src/node-builtins.js --alias:url=./src/node-builtins.js --legal-comments=eof --log-level=warning --outfile=../static/viewer.js
ls -l ../static/viewer.js
