# imaging-depot server image: `docker compose up` (docker-compose.yml) runs it beside
# PostgreSQL and MinIO. Only the server extra is installed; tests run from a checkout.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/imaging-depot
COPY pyproject.toml README.md ./
COPY app ./app
COPY mappings ./mappings
COPY storage ./storage
# Editable: the package reads mappings/ and storage/ beside app/ (the source tree is the install).
RUN pip install -e ".[server]" "psycopg[binary]>=3.2" \
    && useradd --system --home-dir /var/lib/depot --create-home depot
USER depot
ENV DEPOT_DATA_DIR=/var/lib/depot
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz')"
CMD ["depot", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
