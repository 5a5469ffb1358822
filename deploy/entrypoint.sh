#!/bin/sh
# Container entrypoint: `<vision|llm|gateway> [flags...]` runs that service in the foreground
# (exec, so SIGTERM from Kubernetes reaches it and it drains). `fetch-model` downloads
# $TANDEM_MODEL (a Hugging Face hub id, at $TANDEM_REVISION when set) into the hub cache
# ($HF_HUB_CACHE) with the file patterns the services load, and prints its folder: the init
# step of deploy/k8s/components/weights. `--help` lists the choices.
set -eu
service="${1:---help}"
[ "$#" -gt 0 ] && shift
case "$service" in
  vision) exec python -m vision_service "$@" ;;
  llm) exec python -m llm_service "$@" ;;
  gateway) exec python -m gateway "$@" ;;
  fetch-model)
    HF_HUB_OFFLINE=0 exec python -c 'import os
from tandem.models.checkpoint import resolve
print(resolve(os.environ["TANDEM_MODEL"], os.environ.get("TANDEM_REVISION") or None))'
    ;;
  *)
    echo "usage: <vision|llm|gateway> [flags...] | fetch-model; each service lists its flags with --help" >&2
    [ "$service" = "--help" ] && exit 0
    exit 2
    ;;
esac
