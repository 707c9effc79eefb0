.PHONY: demo test test-fast lint bench

demo:        ## start the gateway with demo data (embedded store, SQLite)
	./scripts/demo.sh

test:        ## the whole suite, installing what it needs
	./scripts/test.sh

test-fast:   ## unit tests only: no Orthanc, no PostgreSQL
	./scripts/test.sh -m "not orthanc and not postgres and not slow"

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy && .venv/bin/lint-imports

bench:       ## FHIR search and DICOMweb vs direct Orthanc; the per-request token check; sign-in timing
	.venv/bin/python bench/fhir_search.py
	.venv/bin/python bench/dicomweb.py
	.venv/bin/python bench/token_check.py
	.venv/bin/python bench/signin_timing.py
