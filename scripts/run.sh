#!/usr/bin/env bash
# lungsite on http://127.0.0.1:8000 as production serves it: migrate, bootstrap (starter model +
# admin), collect static files, then gunicorn (gunicorn.conf.py: whitenoise serves the static files,
# each worker loads and warms the active model before its first request). DEBUG stays off, so errors
# and 404s are lungsite's own pages; plain HTTP on loopback (DJANGO_HTTPS=0). PORT=8001 to move it.
set -euo pipefail
cd "$(dirname "$0")/.."
export DJANGO_DEBUG="${DJANGO_DEBUG:-0}"
export DJANGO_HTTPS="${DJANGO_HTTPS:-0}"
port="${PORT:-8000}"
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
echo "lungsite: http://127.0.0.1:$port/  admin login: $LUNGSITE_ADMIN_USERNAME / $LUNGSITE_ADMIN_PASSWORD"
echo
# One Celery worker (batch jobs, PACS analysis and delivery, training runs; docs/jobs.md), with
# beat for the PACS delivery retries. With no LUNGSITE_BROKER_URL it reads kombu's filesystem queue
# under the data folder. It stops with the server.
.venv/bin/celery -A lungsite worker -n "lungsite-dev@%h" -l warning \
  -B -s "$data_dir/celerybeat-schedule" &
worker=$!
trap 'kill "$worker" 2>/dev/null' EXIT
env GUNICORN_BIND="${GUNICORN_BIND:-127.0.0.1:$port}" .venv/bin/gunicorn -c gunicorn.conf.py
