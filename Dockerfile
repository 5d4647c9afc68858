# The dashboard image: web, worker, beat and watcher all run from it (different commands).
# Secrets come from the environment or *_FILE mounts at run time, never from the image.
# BASE_IMAGE: python:3.11-slim, or any Debian bookworm with python3 + python3-venv (the composed-layout
# test builds FROM a debootstrapped one: tests/images/build_compose.sh). The app lives in a venv, so
# it never touches the base's Python (PEP 668) and runs the same on both.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    LAUNCHER_VAR_DIR=/var/lib/flare-launcher LAUNCHER_COLLECTED_STATIC=true \
    LAUNCHER_STATIC_ROOT=/app/staticfiles HOST=0.0.0.0 PORT=8000

WORKDIR /app
COPY requirements.txt .
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements.txt
COPY . .
# collectstatic needs a key only to import settings; this throwaway one is not kept in the image.
# Importing the settings made LAUNCHER_VAR_DIR (as root): it is made again, the app user's.
RUN SECRET_KEY=build-only-not-secret python manage.py collectstatic --noinput \
    && groupadd --system --gid 10001 launcher \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/flare-launcher --no-create-home launcher \
    && rm -rf /var/lib/flare-launcher && install -d -o 10001 -g 10001 -m 0700 /var/lib/flare-launcher

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import os,urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000')).status != 200)"
CMD ["python", "manage.py", "serve"]
