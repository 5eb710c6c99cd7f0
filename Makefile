# The two commands of the README: `make demo` and `make test` (each sets up .venv first).
.PHONY: setup demo test bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/costream run pipelines/demo.yaml --report out/demo-report.json

test: setup
	.venv/bin/python -m pytest -q -m "not ray"
	COSTREAM_REQUIRE_RAY=1 .venv/bin/python -m pytest -q -m ray

bench: setup
	.venv/bin/python benchmarks/runtime_overhead.py
	.venv/bin/python benchmarks/executor_overhead.py --two-nodes
	.venv/bin/python benchmarks/operators_vs_offline.py
	.venv/bin/python benchmarks/operators_vs_continual_inference.py
	.venv/bin/python benchmarks/models_vs_offline.py
	.venv/bin/python benchmarks/models_multistream.py
	.venv/bin/python benchmarks/zmq_roundtrip.py
	.venv/bin/python benchmarks/serve_multistream.py
	.venv/bin/python benchmarks/roofline.py
