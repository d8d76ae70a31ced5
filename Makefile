# terraform-provider-merak. Everything here needs Linux; apply/test need root.

CARGO      ?= cargo
PROFILE_DIR = target/debug
TOOLS       = $(CURDIR)/target/tools
# The newest Terraform reachable here (quickstart, and the tests), and the
# oldest we support (tfplugin6.0): the acceptance tests run on both.
TERRAFORM  ?= $(TOOLS)/terraform-1.15.5
TERRAFORM_OLDEST = $(TOOLS)/terraform-1.0.3
# The version is the workspace's, typed once in Cargo.toml.
VERSION    := $(shell sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
MIRROR      = $(CURDIR)/target/mirror
PACKAGE     = $(MIRROR)/registry.terraform.io/merak/merak/$(VERSION)/linux_amd64
CLI_CONFIG  = $(CURDIR)/target/terraformrc
QUICKSTART  = examples/terraform/quickstart
TF          = TF_CLI_CONFIG_FILE=$(CLI_CONFIG) TF_IN_AUTOMATION=1 CHECKPOINT_DISABLE=1 $(TERRAFORM) -chdir=$(QUICKSTART)

.PHONY: all deps build terraform mirror quickstart quickstart-destroy graph test docs bench bench-external bench-security-groups bench-kubernetes fuzz soak agent-image real-cluster real-cluster-down tofu lint release

all: build

# Host packages the build, the quickstart and the tests use (installed with
# apt-get when missing, or named with how to get them).
deps:
	@tests/acceptance/install-deps.sh

build: deps
	$(CARGO) build --workspace

$(TOOLS)/terraform-%:
	tests/acceptance/install-terraform.sh $(TOOLS) $* >/dev/null

terraform: $(TERRAFORM) $(TERRAFORM_OLDEST)

# A filesystem mirror holding the provider (its agent and merak beside it), and a
# CLI config that installs merak/merak from it: what `terraform init` needs.
mirror: build
	mkdir -p $(PACKAGE)
	ln -sf $(CURDIR)/$(PROFILE_DIR)/terraform-provider-merak $(PACKAGE)/terraform-provider-merak_v$(VERSION)
	ln -sf $(CURDIR)/$(PROFILE_DIR)/merak-agent $(PACKAGE)/merak-agent
	ln -sf $(CURDIR)/$(PROFILE_DIR)/merak $(PACKAGE)/merak
	printf 'provider_installation {\n  filesystem_mirror {\n    path    = "%s"\n    include = ["registry.terraform.io/merak/*"]\n  }\n  direct {\n    exclude = ["registry.terraform.io/merak/*"]\n  }\n}\n' "$(MIRROR)" > $(CLI_CONFIG)

quickstart: deps mirror terraform
	rm -f $(QUICKSTART)/.terraform.lock.hcl
	$(TF) init -upgrade >/dev/null
	$(TF) apply -auto-approve
	@echo
	@echo "== What was built (network namespaces on this host):"
	@ip netns list | grep '^merak-quickstart\.' | sort
	@echo
	@echo "== epm-0 pings epm-5 across racks:"
	@$(PROFILE_DIR)/merak exec quickstart epm-0 -- ping -c 1 -W 2 10.0.0.6 | tail -n 2
	@echo
	@$(PROFILE_DIR)/merak status quickstart
	@echo
	@echo "Inspect:  $(PROFILE_DIR)/merak exec quickstart web-0 -- ip addr"
	@echo "Capture:  $(PROFILE_DIR)/merak capture quickstart web-1 -c 10 -w web-1.pcap"
	@echo "Destroy:  make quickstart-destroy"

quickstart-destroy: mirror terraform
	$(TF) destroy -auto-approve

# The quickstart's picture (its merak_topology_graph, read at plan: nothing
# is built) rendered by Graphviz to docs/quickstart.svg.
graph: deps mirror terraform
	rm -f $(QUICKSTART)/.terraform.lock.hcl
	$(TF) init -upgrade >/dev/null
	$(TF) plan -out=$(CURDIR)/target/quickstart.tfplan >/dev/null
	$(TF) show -json $(CURDIR)/target/quickstart.tfplan \
	  | python3 -c 'import json, sys; print(json.load(sys.stdin)["planned_values"]["outputs"]["topology_dot"]["value"])' \
	  | dot -Tsvg -o docs/quickstart.svg
	@echo "docs/quickstart.svg"

# Unit, kernel and acceptance tests (the acceptance tests drive the real
# terraform binary against the provider and agent built here), on both
# Terraforms and on OpenTofu (built from its Go module by
# tests/opentofu/test.sh). The acceptance suite's real_cluster test builds
# (cached) and starts tests/real-cluster for its scenarios and stops it
# after. Without Go, the OpenTofu run and the real cluster each say so in a
# line and the rest runs. The overlay suite runs once more with the agents
# reached over TCP and mutual TLS instead of unix sockets. Under the other
# Terraforms the real cluster runs its quickstart scenario only: its other
# scenarios test Kubernetes, not the client (and cost minutes each pass).
test: build terraform
	MERAK_TERRAFORM=$(TERRAFORM) $(CARGO) test --workspace -- --test-threads=2
	MERAK_TERRAFORM=$(TERRAFORM_OLDEST) MERAK_CLIENT_PASS=1 MERAK_REAL_CLUSTER_ONLY=quickstart $(CARGO) test -p merak-acceptance -- --test-threads=2
	MERAK_TERRAFORM=$(TERRAFORM) MERAK_AGENT_TRANSPORT=tcp $(CARGO) test -p merak-acceptance --test overlay -- --test-threads=2
	CARGO=$(CARGO) tests/opentofu/test.sh

# The gates CI runs before the tests: the tree as rustfmt.toml formats it,
# and clippy (with [workspace.lints] from Cargo.toml) without a warning.
lint: deps
	@$(CARGO) fmt --version >/dev/null 2>&1 && $(CARGO) clippy --version >/dev/null 2>&1 \
		|| rustup component add rustfmt clippy
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# A release as registries and network mirrors serve it, in target/dist
# (release/package.sh says what each file is). MERAK_GPG_KEY names the key
# that signs the checksums; without it they are left unsigned.
release: deps
	$(CARGO) build --release -p terraform-provider-merak -p merak-agent
	release/package.sh target/release $(VERSION) target/dist

# OpenTofu's tofu from its Go module, into target/tools (cached).
tofu:
	tests/opentofu/build.sh

docs:
	$(CARGO) run -q -p terraform-provider-merak --bin terraform-provider-merak -- --generate-docs docs

# The agent's OCI image (from scratch: the release binary and the libraries
# it links), tagged in the local container storage and written to target/.
# Push it with: podman push $(AGENT_IMAGE) docker://REGISTRY/merak-agent:$(VERSION)
AGENT_IMAGE ?= localhost/merak-agent:$(VERSION)
agent-image: deps
	$(CARGO) build --release -p merak-agent
	agent/image/build.sh target/release/merak-agent target/merak-agent-$(VERSION).oci.tar $(AGENT_IMAGE)

# Benchmarks (not tests): release build, real terraform.
#   make bench                         topology (BENCH_TOPOLOGY="RACKS HOSTS_PER_RACK"), fat trees (BENCH_FAT_TREE="K..."), EVMs, external VPCs, security groups
#   make bench BENCH_EVMS="30000 100 --pingall"
#   make bench-security-groups BENCH_SECURITY_GROUPS="EVMS EPMS ROUNDS"
BENCH_TOPOLOGY ?= 8 8
BENCH_FAT_TREE ?= 8 16
BENCH_EVMS     ?= 10000 100
BENCH_SECURITY_GROUPS ?= 10000 100 2
BENCH_ENV       = MERAK_BIN_DIR=$(CURDIR)/target/release MERAK_TERRAFORM=$(TERRAFORM)
bench: terraform
	$(CARGO) build --release --workspace
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-topology -- $(BENCH_TOPOLOGY)
	for k in $(BENCH_FAT_TREE); do $(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-topology -- fat_tree $$k || exit 1; done
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-evms -- $(BENCH_EVMS)
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-external -- $(BENCH_EXTERNAL)
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-security-groups -- $(BENCH_SECURITY_GROUPS)

# Security groups (the goals: the EVM apply with every EVM in two groups of
# ten rules within 1.15x of the same apply without, one rule changed in
# under 2 s, nftables objects per EPM independent of the EVMs).
bench-security-groups: terraform
	$(CARGO) build --release --workspace
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-security-groups -- $(BENCH_SECURITY_GROUPS)

# External against builtin VPCs: BENCH_EXTERNAL="EVMS EPMS" (the goal: the
# controller's round trips add at most 20 % to the apply).
BENCH_EXTERNAL ?= 5000 50
bench-external: terraform
	$(CARGO) build --release --workspace
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-external -- $(BENCH_EXTERNAL)

# The kubernetes runtime at scale against the fake cluster (release build):
# BENCH_K8S="EPMS LATENCY_MS..." (the issue's targets: 200 pods/s with no
# latency, 50 pods/s with 20 ms per API call).
# Then on the real single-node cluster (tests/real-cluster, started and
# stopped by the bench): BENCH_K8S_REAL="EPMS" as many as the node takes.
BENCH_K8S ?= 2000 0 20
BENCH_K8S_REAL ?= 400
bench-kubernetes: terraform
	$(CARGO) build --release --workspace
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-kubernetes -- $(BENCH_K8S)
	$(BENCH_ENV) $(CARGO) run --release -q -p merak-acceptance --bin bench-kubernetes -- real $(BENCH_K8S_REAL)

# The fault suite by the hundred (not a test: about 10 s a cycle): kills of
# terraform, the provider or the agents' host at random moments of applies
# and destroys, on both Terraforms. A failure prints its seed (replay it with
# MERAK_FAULT_SEED=SEED target/debug/soak 1), the provider's step at each kill
# and what was left.   make soak SOAK_CYCLES=500
SOAK_CYCLES ?= 500
soak: build terraform
	MERAK_TERRAFORM=$(TERRAFORM) $(CARGO) run -q -p merak-acceptance --bin soak -- $(SOAK_CYCLES)
	MERAK_TERRAFORM=$(TERRAFORM_OLDEST) $(CARGO) run -q -p merak-acceptance --bin soak -- $(SOAK_CYCLES)

# Fuzzing (not a test: minutes per target). libFuzzer through cargo-fuzz
# (installed from crates.io when missing), with AddressSanitizer on a nightly
# toolchain when there is one, else without a sanitizer on the stable one.
# `make test` runs a short smoke of the same targets (tests/fuzz/tests/smoke.rs).
#   make fuzz FUZZ_RUNS=1000000 FUZZ_TARGETS="msgpack plan"
FUZZ_RUNS    ?= 1000000
FUZZ_TARGETS ?= msgpack json plan agent_goal
FUZZ_CARGO    = $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' && echo '$(CARGO) +nightly fuzz' || echo 'RUSTC_BOOTSTRAP=1 $(CARGO) fuzz')
FUZZ_FLAGS    = $(shell rustup toolchain list 2>/dev/null | grep -q '^nightly' || echo '--sanitizer none')
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@for target in $(FUZZ_TARGETS); do \
	  echo "== $$target: $(FUZZ_RUNS) runs"; \
	  log=target/fuzz-$$target.log; mkdir -p target; \
	  $(FUZZ_CARGO) run $(FUZZ_FLAGS) --fuzz-dir tests/fuzz --features libfuzzer $$target -- \
	    -runs=$(FUZZ_RUNS) -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 >$$log 2>&1 \
	    || { tail -n 40 $$log; echo "$$target: crashed (log: $$log, input: tests/fuzz/artifacts/$$target/)"; exit 1; }; \
	  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' $$log; \
	done

# A real single-node Kubernetes on this host (root; Go builds the components
# from their published modules, about 5 minutes the first time, cached after):
# etcd, apiserver, controller-manager, scheduler, kubelet, Debian's containerd.
# The agent image of `make agent-image` is imported when built.
#   make real-cluster && export KUBECONFIG=$(CURDIR)/target/real-cluster/kubeconfig
real-cluster:
	tests/real-cluster/build.sh
	tests/real-cluster/up.sh

real-cluster-down:
	tests/real-cluster/down.sh
