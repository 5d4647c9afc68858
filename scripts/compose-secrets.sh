#!/usr/bin/env bash
# Make the secret files compose.yaml reads (once; existing files are kept): Django's secret key,
# PostgreSQL's and Redis's passwords, and the URLs the app connects with. Mode 0600, in ./secrets/.
# Compose bind-mounts them as they are: the three the app reads belong to the image's uid 10001
# (APP_UID), the passwords stay root's (PostgreSQL's and Redis's entrypoints read them as root).
set -euo pipefail
cd "$(dirname "$0")/.."
umask 077
mkdir -p secrets
random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
[ -s secrets/django_secret_key ] || random > secrets/django_secret_key
[ -s secrets/postgres_password ] || random > secrets/postgres_password
[ -s secrets/redis_password ] || random > secrets/redis_password
printf 'postgres://launcher:%s@postgres:5432/launcher\n' "$(cat secrets/postgres_password)" > secrets/database_url
printf 'redis://:%s@redis:6379/0\n' "$(cat secrets/redis_password)" > secrets/redis_url
app_uid=${APP_UID:-10001}
if [ "$(id -u)" = 0 ]; then
    chown "$app_uid" secrets/django_secret_key secrets/database_url secrets/redis_url
else
    echo "run as root, or: sudo chown $app_uid secrets/{django_secret_key,database_url,redis_url}" >&2
fi
echo "secrets ready in $(pwd)/secrets"
