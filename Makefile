# comfy-wrapup: the two commands, and the pieces they are made of.
#   make demo   bring up the staging workshop, play a workshop, run post_workshop.yml on it
#   make test   the whole suite (lint, unit, staging workshop, SSH)
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# The modules run on a workshop host's own Python 3.10 (inventory/local), where bootstrap made one.
export COMFY_WRAPUP_HOST_PYTHON := $(CURDIR)/.venv-host/bin/python
ENGINE := scripts/docker-engine.sh
# Unbuffered, Python reads a pipelined module from its stdin one byte per read(2): half of each
# local task's system time (README, "The wrap-up").
unexport PYTHONUNBUFFERED

.PHONY: setup demo test faults test-unit lint sanity bench staging-up staging-play staging-reset staging-down engine-stop

setup:
	@scripts/bootstrap.sh

demo: setup
	@$(ENGINE) run scripts/demo.sh

# Test workers side by side (pytest-xdist), each with a staging workshop of its own: slots
# COMFY_WRAPUP_SLOT (default 0) to COMFY_WRAPUP_SLOT+TEST_WORKERS-1 (tests/conftest.py, inventory/local).
# A test file stays on one worker (--dist loadfile): its module fixtures are brought up once.
TEST_WORKERS ?= 3
test: setup
	@$(ENGINE) run --stop pytest -n $(TEST_WORKERS) --dist loadfile tests

# The fast tier: everything that needs no Docker Engine.
test-unit: setup
	@pytest -n 2 -m unit tests

lint: setup
	@pytest tests/test_lint.py

# Ansible's own sanity suite on the modules, laid out as a collection in a temporary folder.
sanity: setup
	@scripts/sanity.sh

# Benchmarks against the checklist's own commands, side by side on the same data; the last table puts
# each speed target of issue 14 beside its measured figure. The wrap-up bench uses staging slots
# BENCH_SLOT and BENCH_FLEET (ports +1000*N, see inventory/local), brought down at the end. Module
# runs compile their payloads as on a real host (the tests' bytecode cache is off).
BENCH_RESULTS ?= /var/tmp/comfy-wrapup-bench-results
BENCH_SLOT ?= 17
BENCH_FLEET ?= 18,19
bench: export COMFY_WRAPUP_BYTECODE_CACHE = off
bench: setup
	@mkdir -p $(BENCH_RESULTS)
	@python bench/backup_speed.py --json $(BENCH_RESULTS)/backup.json
	@python bench/metrics_speed.py --json $(BENCH_RESULTS)/metrics.json
	@python bench/archive_speed.py
	@$(ENGINE) run sh -c 'ansible-playbook playbooks/staging.yml -e staging_workshop_num_users=6 >/dev/null && python bench/drain_latency.py'
	@$(ENGINE) run python bench/wrapup_speed.py --slot $(BENCH_SLOT) --fleet $(BENCH_FLEET) --down --json $(BENCH_RESULTS)/wrapup.json
	@python bench/targets.py --folder $(BENCH_RESULTS)

staging-up staging-play staging-reset staging-down: setup
	@$(ENGINE) run ansible-playbook playbooks/staging.yml -e staging_workshop_action=$(@:staging-%=%)

engine-stop:
	@$(ENGINE) stop

# The fault suite: every test marked `fault` (staging ones too, side by side like `make test`). The table
# of cases (case, expected, observed, passed) is printed at the end and written to $(FAULT_TABLE).
FAULT_TABLE ?= tests/.artifacts/faults.md
faults: setup
	@$(ENGINE) run --stop pytest -n $(TEST_WORKERS) --dist loadfile -m fault --fault-table $(FAULT_TABLE) tests
