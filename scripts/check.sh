#!/usr/bin/env bash
# Installs audience-sync with its development tools into .venv, then runs every check CI runs:
# formatting, lint, types (mypy strict) and the whole test suite, PostgreSQL included.
# Extra arguments go to pytest, e.g. `bash scripts/check.sh -k delivery`.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
# dbt-core, for the tests that build a dbt project: in a virtual environment of its own, since it pins a
# pathspec older than the one mypy needs (audience-sync itself needs no dbt: it reads manifest.json).
[ -x .venv-dbt/bin/dbt ] || "$python" -m venv .venv-dbt
.venv-dbt/bin/python -m pip install --quiet --disable-pip-version-check dbt-core==1.11.16 dbt-postgres==1.11.0

# The storage tests need PostgreSQL at 127.0.0.1:5432; start the local cluster if it is installed and down.
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start \
      || echo "warning: could not start PostgreSQL" >&2
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi

.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
if [ -n "${BENCH_SMOKE:-}" ]; then
  # The benchmark as a smoke run (CI): it must finish; times are not judged here.
  .venv/bin/python bench/run.py --users 100000 --repeat 1 --results "$(mktemp)"
  .venv/bin/python bench/chartmogul_api.py --users 20000 --rate-users 120 --repeat 1
  .venv/bin/python bench/warehouse.py --users 20000 --churn 0.01 --repeat 1
  .venv/bin/python bench/console.py --changes 5000 --jobs 3 --history 200 --repeat 5
  .venv/bin/python bench/reconcile.py --customers 5000 --repeat 1
  .venv/bin/python bench/writeback.py --changes 20000 --repeat 1
fi
.venv/bin/pytest "$@"
