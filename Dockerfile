# syntax=docker/dockerfile:1
# oneroster-cdc: the daemon and its CLI (`oneroster-cdc run | sync | status | tail | simulate ...`).
#
#   docker build -t oneroster-cdc:local .
#   docker run --rm -v "$PWD/config:/app/config:ro" oneroster-cdc:local check-config
#
# The package is installed as a wheel built from the source tree (the Avro schemas ship inside
# it, as producer/schemas).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ONEROSTER_CDC_CONFIG=/app/config/oneroster-cdc.toml

# The daemon runs as the unprivileged user cdc, which owns the state volume. The state holds
# student records: the volume is 0700 (a new named volume copies this owner and mode) and the
# daemon keeps its files 0600 whatever the umask.
RUN groupadd --system --gid 10001 cdc \
 && useradd --system --uid 10001 --gid cdc --home-dir /app --shell /usr/sbin/nologin cdc \
 && mkdir -p /var/lib/oneroster-cdc/state \
 && chown -R cdc:cdc /var/lib/oneroster-cdc \
 && chmod -R 0700 /var/lib/oneroster-cdc

WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY schemas ./schemas
COPY setup.py ./
RUN pip install . \
 && rm -rf /app/producer /app/schemas /app/setup.py /app/build \
 && python -c "from producer.avro import Schemas; Schemas.load(); import producer.cli"
COPY config ./config

USER cdc
VOLUME ["/var/lib/oneroster-cdc"]
# /healthz /readyz /metrics (the [http] listen address of the config)
EXPOSE 8080
ENTRYPOINT ["oneroster-cdc"]
CMD ["run"]
