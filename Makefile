# Convenience targets; scripts/ hold the logic.
.PHONY: demo test unit kernel bench

demo:   ## boot the VM (kernel with ipvlan) and apply every seed example
	scripts/venv
	scripts/vm-run -- scripts/demo

test:   ## every test: unit on the host, kernel suite + small benchmark in the VM
	scripts/test

unit:
	scripts/test unit

kernel:
	scripts/test kernel

bench:  ## full-size benchmark in the VM (slow under emulation)
	scripts/vm-run -- .venv/bin/python bench/run.py
