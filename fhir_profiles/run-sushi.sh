#!/bin/sh
# Runs the pinned SUSHI (`make fhir-tools` installs it) offline, on the project-local FHIR
# package cache: `fhir_profiles/run-sushi.sh <project folder> [--out <folder>]`.
#
# - HOME: fhir-package-loader's cache is $HOME/.fhir/packages (os.homedir(), which honours
#   HOME), so this points it at .fhir-home/, where build_core_package.py put FHIR R4 core.
# - npm_config_offline: SUSHI asks `npm view fsh-sushi version` on every run, to advise an
#   upgrade; offline, npm answers at once without the registry.
# - HTTPS_PROXY/HTTP_PROXY to a closed local port: what is left (the "latest" versions of
#   SUSHI's automatic dependencies hl7.fhir.uv.tools.r4, hl7.terminology.r4 and
#   hl7.fhir.uv.extensions.r4 on packages.fhir.org, and the version check's fallback) fails at
#   once, on every machine, instead of depending on DNS; those failures are warnings only. A
#   machine that could reach packages.fhir.org would otherwise load those packages and could
#   compile differently from CI.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
sushi="$root/.node/node_modules/.bin/sushi"
[ -x "$sushi" ] || { echo "SUSHI is not installed: run 'make fhir-tools'" >&2; exit 2; }
HOME="$root/.fhir-home"
npm_config_offline=true
npm_config_update_notifier=false
npm_config_loglevel=silent
HTTPS_PROXY=http://127.0.0.1:9
HTTP_PROXY=http://127.0.0.1:9
https_proxy=$HTTPS_PROXY
http_proxy=$HTTP_PROXY
export HOME npm_config_offline npm_config_update_notifier npm_config_loglevel HTTPS_PROXY HTTP_PROXY https_proxy http_proxy
unset NO_PROXY no_proxy FPL_REGISTRY 2>/dev/null || true
exec "$sushi" build "$@"
