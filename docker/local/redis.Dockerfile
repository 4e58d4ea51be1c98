# A local stand-in for redis:7-alpine (docker-compose.local.yml), for machines that cannot pull
# from a registry: Debian bookworm's redis-server (7.0) on the locally made base image.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
USER redis
EXPOSE 6379
# as the official image does when given no configuration file: listen everywhere, no protected mode
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no"]
