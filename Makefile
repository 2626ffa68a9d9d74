# The two commands of the README. Both do the whole set-up first (idempotent, fast when done).
VENV ?= .venv
PY := $(VENV)/bin/python
export OMPI_ALLOW_RUN_AS_ROOT ?= 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ?= 1
# SLURM's daemons (slurmctld, slurmd), which the SLURM tests start, live in sbin: a PATH without it
# (a non-login shell, `env -i PATH=/usr/local/bin:/usr/bin:/bin make test`) would not find them
export PATH := $(PATH):/usr/local/sbin:/usr/sbin:/sbin

.PHONY: setup demo test test-quick bench figures clean

setup:
	bash launch/setup.sh

# the main job: 2-rank synchronized SGD of the 1-D CNN on MNIST-1D, on CPU
demo: setup
	$(VENV)/bin/mpirun -np 2 --oversubscribe --bind-to none $(VENV)/bin/ddtrain-train $(ARGS)

# the whole test suite (what CI runs); also installs SLURM, PMIx, iproute2 and Horovod (cached wheel)
test: setup
	bash launch/setup-test.sh
	$(VENV)/bin/pytest -q -ra $(ARGS)

# the quick subset: no multi-process end-to-end runs
test-quick: setup
	$(VENV)/bin/pytest -q -ra -m "not slow" $(ARGS)

bench: setup
	$(PY) benchmarks/overhead.py $(ARGS)

# the README's figure tables, rewritten from the recorded benchmark outputs in results/ (no benchmark runs)
figures: setup
	$(PY) benchmarks/figures.py $(ARGS)

clean:
	rm -rf outputs .pytest_cache
