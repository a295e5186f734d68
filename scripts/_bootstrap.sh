# Sourced by the scripts: makes sure .venv holds the project and its pinned tools.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
stamp="$VENV/.runtrack-installed"
want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$PY" ]; then
  echo "setup: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing the project and its pinned dependencies into .venv" >&2
  "$PY" -m pip install -q --disable-pip-version-check -e "$ROOT[dev]" >&2
  if "$PY" -m pip show -q cassandra-driver >/dev/null 2>&1; then
    echo "setup: cassandra-driver must not be installed beside scylla-driver" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
