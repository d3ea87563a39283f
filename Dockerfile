# rpcbalancer's container image. The build context is the repository root.
#
#   docker build -t rpcbalancer .                  # dependencies from PyPI, rpcbalancer from source
#   docker build --build-arg WHEELS=dist/wheels -t rpcbalancer .
#       offline: dist/wheels (inside the context) holds every wheel, rpcbalancer's own too, made
#       by a Python of the same version as BASE's: pip evaluates markers (redis needs
#       async-timeout below 3.11.3) against the interpreter that runs it
#   --build-arg BASE=...      any base with python3, its venv module, sh, groupadd and useradd
#   --build-arg EXTRAS=       no optional store client (default: redis)
# With podman/buildah, build with --format docker: the OCI format drops HEALTHCHECK.
#
#   docker run -p 8080:8080 -e RPCBALANCER_NODES=https://a.example,https://b.example rpcbalancer
#   docker run -p 8080:8080 -v ./config.yaml:/etc/rpcbalancer/config.yaml:ro rpcbalancer
#   docker run -p 8080:8080 -e RPCBALANCER_CONFIG="$(cat config.yaml)" rpcbalancer
#   docker run --rm rpcbalancer canary --once --store redis://redis:6379/0
# Configuration: RPCBALANCER_CONFIG names the file (default /etc/rpcbalancer/config.yaml, baked
# from deploy/container/config.yaml: mount yours over it) or holds the YAML/JSON text itself;
# RPCBALANCER_NODES (comma-separated URLs) replaces its nodes, RPCBALANCER_STORE its store.
# See docs/deploy-container.md.

ARG BASE=python:3.12-slim

# --- build: a virtual environment in /opt/rpcbalancer ---------------------------------------
FROM ${BASE} AS build
ARG WHEELS=
ARG EXTRAS=redis
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/rpcbalancer; \
    spec=rpcbalancer; src=/src; \
    if [ -n "$EXTRAS" ]; then spec="rpcbalancer[$EXTRAS]"; src="/src[$EXTRAS]"; fi; \
    if [ -n "$WHEELS" ]; then \
        /opt/rpcbalancer/bin/pip install --no-index --find-links "/src/$WHEELS" "$spec"; \
    else \
        /opt/rpcbalancer/bin/pip install "$src"; \
    fi; \
    /opt/rpcbalancer/bin/pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true; \
    /opt/rpcbalancer/bin/rpcbalancer version

# --- runtime: the same base (the venv's python is a link into it) -------------------------
FROM ${BASE}
LABEL org.opencontainers.image.title="rpcbalancer" \
      org.opencontainers.image.description="A load balancer for blockchain JSON-RPC API nodes" \
      org.opencontainers.image.licenses="MIT"
# Numeric ids, so that Kubernetes' runAsNonRoot can check them; plain useradd (not --system):
# 10001 is above the system range.
RUN set -eu; \
    groupadd --gid 10001 rpcbalancer; \
    useradd --uid 10001 --gid 10001 --home-dir /var/lib/rpcbalancer --no-create-home \
        --shell /usr/sbin/nologin rpcbalancer; \
    install -d -o 10001 -g 10001 -m 0750 /var/lib/rpcbalancer; \
    install -d -m 0755 /etc/rpcbalancer
COPY --from=build /opt/rpcbalancer /opt/rpcbalancer
COPY deploy/container/config.yaml /etc/rpcbalancer/config.yaml
# Byte-code was compiled at install time and the venv is root's: nothing to write there.
ENV PATH=/opt/rpcbalancer/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RPCBALANCER_CONFIG=/etc/rpcbalancer/config.yaml \
    RPCBALANCER_PORT=8080
# The default store (the baked config's sqlite:////var/lib/rpcbalancer/health.db) lives in this
# volume; it is the working directory too, so a relative sqlite:///name.db lands here as well.
WORKDIR /var/lib/rpcbalancer
VOLUME ["/var/lib/rpcbalancer"]
USER 10001:10001
EXPOSE 8080
# /health is 503 while no node is usable: "unhealthy" means "no upstream", which is what a
# load balancer in front should act on. For a liveness probe use /version (see the docs).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('RPCBALANCER_PORT', '8080'), timeout=4)"]
# rpcbalancer handles SIGTERM itself (it drains for 5 s), so it can be PID 1.
ENTRYPOINT ["rpcbalancer"]
# --host: a config written for a bare-metal install usually says 127.0.0.1, unreachable from
# outside the container. The port is the config's (the baked one: $RPCBALANCER_PORT).
CMD ["serve", "--host", "0.0.0.0"]
