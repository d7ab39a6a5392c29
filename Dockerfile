# syntax=docker/dockerfile:1
# atlas-log-exporter: `docker build -t atlas-log-exporter .`
# Run:   docker run --env-file atlas-log.env atlas-log-exporter                 (polls forever: `atlas-log run`)
#        docker run --env-file atlas-log.env atlas-log-exporter run --once      (one cycle, for cron/batch)
#        docker run -v $PWD/logs:/data atlas-log-exporter status -o /data/atlas-logs
ARG PYTHON_VERSION=3.12

# ---- build: the wheel, from the source tree only (see .dockerignore)
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --disable-pip-version-check --no-deps --wheel-dir /dist .

# ---- runtime: slim Python, the wheel and its dependencies, an unprivileged user
FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="atlas-log-exporter" \
      org.opencontainers.image.description="Ships the MongoDB Atlas activity feed to S3 or a folder, exactly once" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    ATLAS_LOG_HEALTH_FILE=/tmp/atlas-log/health.json \
    ATLAS_LOG_HEALTH_MAX_AGE=5m
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir --disable-pip-version-check /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && groupadd --system --gid 10001 atlaslog \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin atlaslog \
    && mkdir -p /data \
    && chown 10001:10001 /data
# A local destination defaults to ./atlas-logs, i.e. /data/atlas-logs: mount a volume there, or use s3://.
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
# Prometheus metrics (atlas-log run --metrics-port, default 8000).
EXPOSE 8000
# Healthy while the last successful cycle is recent; the start period covers a long first backfill.
HEALTHCHECK --interval=60s --timeout=10s --start-period=15m --retries=3 \
    CMD atlas-log health --max-age "${ATLAS_LOG_HEALTH_MAX_AGE}" || exit 1
ENTRYPOINT ["atlas-log"]
CMD ["run"]
