# Sourced by scripts/test and scripts/demo: make pnpm (pinned in package.json's
# packageManager, through corepack) and the workspace's packages available.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "ztm needs Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

if ! command -v pnpm >/dev/null 2>&1 || ! pnpm --version >/dev/null 2>&1; then
  corepack enable >/dev/null 2>&1 || npm install -g corepack@latest >/dev/null
  corepack enable
  # Some registry mirrors serve no package signatures; corepack then refuses
  # pnpm. The tarball's integrity hash is still checked.
  if ! pnpm --version >/dev/null 2>&1; then export COREPACK_INTEGRITY_KEYS=0; fi
fi
export COREPACK_ENABLE_DOWNLOAD_PROMPT=0
pnpm install --frozen-lockfile --reporter=append-only | grep -v '^\.\.\./' || true
test -d node_modules/.pnpm || { echo "pnpm install failed" >&2; exit 1; }
