#!/usr/bin/env bash
# Development server on http://127.0.0.1:8000: migrate, bootstrap (starter model + admin), serve.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_DEBUG="${DJANGO_DEBUG:-1}"
data_dir="${LUNGSITE_DATA_DIR:-var}"
mkdir -p "$data_dir"
export LUNGSITE_ADMIN_USERNAME="${LUNGSITE_ADMIN_USERNAME:-admin}"
if [ -z "${LUNGSITE_ADMIN_PASSWORD:-}" ]; then
  # A random password kept in the data folder: the same login on every run of this checkout.
  [ -s "$data_dir/admin_password" ] || (umask 077; .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(12))" > "$data_dir/admin_password")
  export LUNGSITE_ADMIN_PASSWORD="$(cat "$data_dir/admin_password")"
fi
.venv/bin/python manage.py migrate --no-input
.venv/bin/python manage.py bootstrap
.venv/bin/python manage.py collectstatic --no-input -v 0
echo
echo "lungsite: http://127.0.0.1:8000/  admin login: $LUNGSITE_ADMIN_USERNAME / $LUNGSITE_ADMIN_PASSWORD"
echo
# One Celery worker for batch jobs (jobs/, docs/jobs.md): with no LUNGSITE_BROKER_URL it reads
# kombu's filesystem queue under the data folder; it stops with the server.
.venv/bin/celery -A lungsite worker --pool=solo -c 1 -n "lungsite-dev@%h" -l warning &
worker=$!
trap 'kill "$worker" 2>/dev/null' EXIT
.venv/bin/python manage.py runserver 127.0.0.1:8000
