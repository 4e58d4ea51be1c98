#!/bin/sh
# `uv pip install "$@"` inside an image build. HTTPS may be intercepted where the image is built:
# the build can mount the host's CA bundle at /etc/ssl/certs/host-ca.crt (scripts/images.sh does),
# used for this step only and never copied into the image. A host uv cache mounted at
# /root/.cache/uv is used when present; otherwise nothing is cached in the layer.
set -eu
if [ -s /etc/ssl/certs/host-ca.crt ]; then
  export SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt PIP_CERT=/etc/ssl/certs/host-ca.crt
fi
if mountpoint -q /root/.cache/uv 2>/dev/null; then
  export UV_CACHE_DIR=/root/.cache/uv UV_LINK_MODE=copy
else
  export UV_NO_CACHE=1
fi
if ! command -v uv >/dev/null; then
  pip install --quiet --no-cache-dir 'uv==0.13.9'
fi
exec uv pip install "$@"
