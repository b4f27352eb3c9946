# Everyday targets; CI runs the same commands through .ci/run.
PYTHON ?= python3

.PHONY: install test test-fast test-pure bench bench-peers lint debug clean demo fuzz

install:
	$(PYTHON) -m pip install -q -e '.[test,lint]'

test: install
	$(PYTHON) -m pytest -q

# everything but tests/e2e (whole servers, images, namespaces): about 3 minutes
test-fast: install
	$(PYTHON) -m pytest -q --ignore=tests/e2e

test-pure:
	FASTDNS_NO_EXTENSIONS=1 $(PYTHON) -m pytest -q

bench: install
	$(PYTHON) -m pytest -q bench --benchmark-enable --benchmark-columns=median,ops,rounds

# fastdns vs knot/nsd/unbound/C floor over loopback (~5 min; bench/README.md)
bench-peers:
	$(PYTHON) bench/peers.py

lint:
	ruff check fastdns tests bench fuzz setup.py
	cython-lint $$(find fastdns -name '*.pyx' -o -name '*.pxd')
	python3 -m mypy

# Coverage-guided fuzzing with atheris: FUZZ_SECONDS per target (fuzz/README.md).
# Found inputs go to build/fuzz/TARGET/; the committed seeds are only read.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= query response corefile statefile
fuzz:
	@$(PYTHON) -c "import atheris" 2>/dev/null || $(PYTHON) -m pip install -q atheris
	@for t in $(FUZZ_TARGETS); do \
		echo "== fuzz $$t: $(FUZZ_SECONDS)s"; \
		FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTHON) -m fuzz $$t || exit 1; \
	done

debug:
	FASTDNS_DEBUG=1 $(PYTHON) setup.py build_ext --inplace --force

demo: install
	fastdns serve --demo

clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks
	find fastdns -name '*.so' -delete
	find fastdns -name '*.pyx' | sed 's/\.pyx$$/.c/' | xargs rm -f
	find fastdns -name '*.html' -delete
	rm -f fastdns/server/_layout.pxi
