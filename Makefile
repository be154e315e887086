# Convenience targets; scripts/ hold the logic.
.PHONY: demo test unit cluster kernel bench

demo:   ## boot the VM (kernel with ipvlan) and apply every seed example
	scripts/system-deps
	scripts/venv
	scripts/vm-run -- scripts/demo

test:   ## every test: unit on the host, kernel suite + small benchmark in the VM
	scripts/test $(ARGS)

unit:   ## unit tests on the host; pytest arguments in ARGS='-k plan'
	scripts/test unit $(ARGS)

cluster: ## cluster-mode tests against real etcd (tests/cluster); pytest arguments in ARGS
	scripts/test cluster $(ARGS)

kernel: ## kernel suite in the VM; pytest arguments in ARGS='-k harness'
	scripts/test kernel $(ARGS)

bench:  ## full-size benchmark in the VM (slow under emulation)
	scripts/system-deps
	scripts/venv
	scripts/vm-run -- .venv/bin/python bench/run.py
