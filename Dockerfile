# The dashboard image: web, worker, beat and watcher all run from it (different commands).
# Secrets come from the environment or *_FILE mounts at run time, never from the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LAUNCHER_VAR_DIR=/var/lib/flare-launcher LAUNCHER_COLLECTED_STATIC=true \
    LAUNCHER_STATIC_ROOT=/app/staticfiles HOST=0.0.0.0 PORT=8000

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# collectstatic needs a key only to import settings; this throwaway one is not kept in the image.
RUN SECRET_KEY=build-only-not-secret python manage.py collectstatic --noinput \
    && useradd --system --uid 10001 --home-dir /var/lib/flare-launcher --create-home launcher

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
CMD ["python", "manage.py", "serve"]
