#!/bin/sh
# Container entrypoint: `<vision|llm|gateway> [flags...]` runs that service in the foreground
# (exec, so SIGTERM from Kubernetes reaches it and it drains). `--help` lists the choices.
set -eu
service="${1:---help}"
[ "$#" -gt 0 ] && shift
case "$service" in
  vision) exec python -m vision_service "$@" ;;
  llm) exec python -m llm_service "$@" ;;
  gateway) exec python -m gateway "$@" ;;
  *)
    echo "usage: <vision|llm|gateway> [flags...]; each service lists its flags with --help" >&2
    [ "$service" = "--help" ] && exit 0
    exit 2
    ;;
esac
