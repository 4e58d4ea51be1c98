#!/bin/sh
# `uv pip install "$@"` inside an image build. HTTPS may be intercepted where the image is built:
# the build can pass the host's CA bundle as the build secret `hostca` (scripts/images.sh does:
# `--secret id=hostca,src=/etc/ssl/certs/ca-certificates.crt`), mounted by the RUN step at
# /run/secrets/hostca, used for that step only and never stored in a layer. A host uv cache
# mounted at /root/.cache/uv is used when present; otherwise nothing is cached in the layer.
set -eu
if [ -s /run/secrets/hostca ]; then
  export SSL_CERT_FILE=/run/secrets/hostca PIP_CERT=/run/secrets/hostca
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
