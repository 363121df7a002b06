# dvconnect as a service: `dvconnect schedule`, with /metrics and /healthz on port 9464.
# Settings come from the environment (DVCONNECT_*; see .env.example); mount your mappings at
# /app/mappings and give DVCONNECT_DATABASE_URL a PostgreSQL URL (docker-compose.yml).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY connector ./connector
COPY jobs ./jobs
COPY emulator ./emulator
RUN pip install --no-cache-dir '.[postgres]'
COPY mappings ./mappings

RUN useradd --system --uid 10001 --home-dir /app dvconnect \
    && mkdir -p /app/var && chown dvconnect /app/var
USER dvconnect

ENV DVCONNECT_METRICS_PORT=9464 \
    DVCONNECT_METRICS_HOST=0.0.0.0 \
    DVCONNECT_LOG_FORMAT=json
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["dvconnect", "health", "--timeout", "5"]
CMD ["dvconnect", "schedule"]
