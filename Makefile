# Shortcuts; the scripts do the work and can be run directly.
.PHONY: demo test up down status build clippy bench

demo:   ## set up, start the local cluster, run the demo
	./scripts/demo.sh
test:   ## every test
	./scripts/test.sh
up:     ## start the local cluster in the background (CONFIG=cluster-config/local.toml)
	./scripts/cluster.sh up $(CONFIG)
down:   ## stop it
	./scripts/cluster.sh down
status:
	./scripts/cluster.sh status
build:
	cargo build --bins
clippy:
	cargo clippy --workspace --all-targets -- -D warnings
bench:  ## naive baseline vs the cluster, same run (see docs/BENCHMARKS.md)
	./scripts/bench.sh
