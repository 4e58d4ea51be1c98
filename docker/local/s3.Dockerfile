# A local stand-in for upstream's MinIO examples image (docker-compose.local.yml), for machines
# that cannot pull from a registry: moto's S3 server (moto[server], the version requirements.lock
# pins) on the locally made Debian base. It starts empty and keeps objects in memory.
# Build context: the repository root (it reads requirements.lock and docker/uv-install.sh).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && python3 -m venv /opt/venv
COPY docker/uv-install.sh /usr/local/bin/uv-install
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=secret,id=hostca uv-install --constraint /tmp/requirements.lock "moto[server]" \
 && rm /tmp/requirements.lock \
 && useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin s3
USER 10001
EXPOSE 9000
CMD ["moto_server", "--host", "0.0.0.0", "--port", "9000"]
