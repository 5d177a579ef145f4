# syntax=docker/dockerfile:1
# The gateway as a container: slim Python, a non-root user, the wheel in a venv, the spool
# on a volume, /healthz as the HEALTHCHECK.
#   docker build -t telemetry-gateway .
#   docker run -v gateway-spool:/var/lib/gateway -v ./keys.json:/run/secrets/gateway-keys:ro \
#     -v ./local-password:/run/secrets/local-password:ro -v ./cloud-password:/run/secrets/cloud-password:ro \
#     -p 9108:9108 telemetry-gateway
# Or deploy/compose.yaml for the site broker and the gateway together.
#
# Tested without a container runtime (these build machines cannot pull a base image):
# tests/test_package.py runs the same steps, `pip wheel .` then `pip install` of the
# wheel into a fresh venv, and uses the result from an empty folder; tests/test_deploy.py
# checks this file's structure and the config it ships.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway/ gateway/
COPY devices/ devices/
COPY rules/ rules/
COPY config.toml ./
RUN pip wheel --no-deps --no-cache-dir -w /dist .

FROM python:3.11-slim
# tini as PID 1: forwards SIGTERM to the gateway (which spools what is in flight and exits 0)
# and reaps zombies; `docker stop` then ends the container cleanly within its timeout.
RUN apt-get update && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/gateway --shell /usr/sbin/nologin gateway \
    && install -d -o gateway -g gateway -m 0700 /var/lib/gateway
COPY --from=build /dist/ /tmp/dist/
RUN python -m venv /opt/gateway \
    && /opt/gateway/bin/pip install --no-cache-dir /tmp/dist/*.whl \
    && rm -rf /tmp/dist \
    && /opt/gateway/bin/gateway --version
COPY rules/ /etc/gateway/rules/
COPY deploy/site/config.toml /etc/gateway/config.toml
RUN /opt/gateway/bin/gateway check /etc/gateway/rules/*.toml
ENV PATH=/opt/gateway/bin:$PATH \
    GATEWAY_KEYS_FILE=/run/secrets/gateway-keys \
    PYTHONUNBUFFERED=1
USER gateway:gateway
WORKDIR /var/lib/gateway
VOLUME ["/var/lib/gateway"]
EXPOSE 9108 5023
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--", "gateway"]
CMD ["run", "--config", "/etc/gateway/config.toml"]
