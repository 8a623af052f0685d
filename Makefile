# gitferry — the commands a newcomer (and CI) runs. `make test` is what `.ci/run` calls.
#
#   make demo     run the main job: `gitferry demo`, the whole service offline in a temp dir
#   make test     install what the tests need, then build and run every test of the workspace
#   make bench    compare `gitferry mirror` with the git CLI on generated repositories and
#                 shapes (200 MiB blob, 386k-object history, 20,000 tags), git:// and HTTP
#   make lint     clippy with warnings as errors; list product functions over 80 lines
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: test deps build demo demo-mirror bench bench-cache load cost fuzz lint fmt cfn-lint package

## Tools the tests need that a fresh machine may lack. The git CLI is the tests' independent
## reference (git daemon, git http-backend, git fsck); the product itself never runs git.
## moto is the S3 emulator of the store tests (tests/src/moto.rs runs .venv/bin/moto_server),
## pinned because 5.2 answers S3 `If-None-Match: *` / `If-Match` with 412 like AWS; the venv
## step is skipped when it already has this version, so `make test` stays fast.
MOTO_VERSION := 5.2.5
GIFTLESS_VERSION := 0.6.2
VENV := .venv
deps:
	@if [ ! -x "$$(git --exec-path 2>/dev/null)/git-http-backend" ] || [ ! -x "$$(git --exec-path)/git-daemon" ]; then \
	  echo "installing git (with daemon and http-backend) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
	@if [ -x $(VENV)/bin/moto_server ] && \
	    [ "$$($(VENV)/bin/python -c 'import moto; print(moto.__version__)' 2>/dev/null)" = "$(MOTO_VERSION)" ]; then \
	  exit 0; \
	fi; \
	command -v python3 >/dev/null || { echo "python3 not found: install it (apt-get install python3 python3-venv)"; exit 1; }; \
	if [ ! -x $(VENV)/bin/python ]; then \
	  echo "creating $(VENV)"; \
	  python3 -m venv $(VENV) || { rm -rf $(VENV); echo "python3 -m venv failed: install python3-venv"; exit 1; }; \
	fi; \
	echo "installing moto[server]==$(MOTO_VERSION) into $(VENV)"; \
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "moto[server]==$(MOTO_VERSION)"
	@# giftless (a Git LFS server; tests/src/lfs.rs) with its local storage backend, served by
	@# waitress. giftless 0.6.2 declares none of its dependencies, so they are pinned here as
	@# its own requirements/main.txt pins them (Flask, Werkzeug and python-dotenv as moto brings them: giftless
	@# runs on both). Skipped when the venv already has this version.
	@if [ "$$($(VENV)/bin/python -c 'import importlib.metadata as m; print(m.version("giftless"))' 2>/dev/null)" != "$(GIFTLESS_VERSION)" ]; then \
	  echo "installing giftless==$(GIFTLESS_VERSION) (Git LFS server for the LFS tests) into $(VENV)"; \
	  $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "giftless==$(GIFTLESS_VERSION)" \
	    waitress==3.0.2 flask-classful==0.16.0 flask-marshmallow==0.15.0 marshmallow==3.21.1 webargs==8.4.0 \
	    figcan==0.0.4 pyjwt==2.8.0 python-dateutil==2.9.0.post0 cachetools==5.3.3 \
	    importlib-metadata==7.0.2; \
	fi
	@# The git-lfs client makes the LFS test repositories and reads the mirrors back.
	@if ! command -v git-lfs >/dev/null; then \
	  echo "installing git-lfs (the reference LFS client of the LFS tests) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git-lfs >/dev/null; \
	fi
	@# dulwich (pure-Python git server, protocol v0) is a second, non-git server in the engine
	@# tests (tests/src/dulwich.rs); Debian's package, for /usr/bin/python3.
	@if ! /usr/bin/python3 -c 'import dulwich' 2>/dev/null; then \
	  echo "installing python3-dulwich (a second git server for the engine tests) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-dulwich >/dev/null; \
	fi
	@# JGit (the engine of Gerrit) is a third server in the engine tests (tests/src/jgit.rs):
	@# jgit-cli runs `jgit daemon` (git://) once the HTTP client, commons-logging and slf4j jars
	@# complete its classpath (as shipped it fails with NoClassDefFoundError); its smart HTTP
	@# servlet runs on Jetty 9 through a JDK's source launcher (javac).
	@if ! command -v jgit >/dev/null || ! command -v javac >/dev/null || \
	    ! [ -f /usr/share/java/jetty9-server.jar -a -f /usr/share/java/servlet-api.jar -a -f /usr/share/java/httpclient.jar \
	         -a -f /usr/share/java/httpcore.jar -a -f /usr/share/java/commons-logging.jar -a -f /usr/share/java/slf4j-nop.jar ]; then \
	  echo "installing JGit (a third git server for the engine tests) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    jgit-cli libjetty9-java libservlet-api-java libhttpclient-java libhttpcore-java libcommons-logging-java \
	    libslf4j-java default-jdk-headless >/dev/null; \
	fi
	@# OpenSSH's sshd (and ssh-keygen) serve git over SSH in the ssh:// tests (tests/src/sshd.rs).
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null; then \
	  echo "installing openssh-server (sshd for the ssh:// tests) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; \
	fi
	@# playwright-core drives Chromium's keyboard in the status page tests (npm, pinned in
	@# tests/ui/package-lock.json; it downloads no browser: it uses Debian's chromium).
	@if [ ! -d tests/ui/node_modules/playwright-core ]; then \
	  command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }; \
	  echo "installing playwright-core into tests/ui"; \
	  (cd tests/ui && npm ci --no-audit --no-fund --silent); \
	fi
	@# GitHub's published REST API description (npm @octokit/openapi, pinned in
	@# tests/openapi/package-lock.json): the GitHub stand-in of the account tests answers with its
	@# response shapes and is validated against its schemas; and recorded real GitHub sessions
	@# (npm @octokit/fixtures) replayed to gitferry's GitHub client. Only the extract is kept (the
	@# packages unpack to ~400 MB).
	@if [ ! -f tests/openapi/github.json ] || [ ! -d tests/openapi/recordings ] \
	    || [ tests/openapi/package-lock.json -nt tests/openapi/github.json ] \
	    || [ tests/openapi/extract.py -nt tests/openapi/github.json ]; then \
	  command -v npm >/dev/null || { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; }; \
	  echo "extracting GitHub's OpenAPI description into tests/openapi/github.json"; \
	  (cd tests/openapi && npm ci --no-audit --no-fund --silent && python3 extract.py && rm -rf node_modules); \
	fi
	@# /usr/bin/time reads the peak RSS of the 300 MB LFS run in `make test` (bench/lfs.sh).
	@if [ ! -x /usr/bin/time ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; \
	fi
	@# Headless Chromium renders the status page in one end-to-end test.
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium (headless browser for the status page test) from Debian"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

build:
	$(CARGO) build --workspace --bins

## The CLI binary is built first: end-to-end tests run it as a user would. Afterwards, no
## server the harness started may still run (tests/src/process.rs marks them all).
test: deps cfn-lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast
	@# Issue 19's memory bound: a 300 MB LFS object mirrored by the CLI as built above, peak RSS
	@# under 100 MiB, the object on the target's LFS server (giftless) afterwards.
	GITFERRY_BIN=$(CURDIR)/target/debug/gitferry LFS_MB=300 MAX_RSS_MB=100 bash bench/lfs.sh
	@bash tests/leftovers.sh

demo:
	$(CARGO) run -q --profile demo -p gitferry --no-default-features -- demo

## The engine alone: `gitferry mirror` between two repositories on a loopback git daemon.
demo-mirror: build
	bash infra/local/demo.sh

bench:
	bash bench/mirror.sh
	bash bench/shapes.sh

## 5,000 signed webhook deliveries against a release `gitferry serve` (latency, nothing lost).
load:
	$(CARGO) build --release -q -p gitferry
	GITFERRY_BIN=$(CURDIR)/target/release/gitferry $(CARGO) test -q -p gitferry-tests --test load -- --ignored --nocapture

## libFuzzer on the parsers of untrusted input (webhooks, report-status, queue messages,
## configuration, and what git servers send: ref advertisements v0/v2 and side-band
## receive-pack responses), FUZZ_SECONDS each. cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the
## stable toolchain (the only one on these machines) accept them.
FUZZ_SECONDS ?= 30
FUZZ_TARGETS := webhook report_status sync_request config protocol
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(CURDIR)/target/fuzz $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 \
	    | grep -E 'stat::number_of_executed_units|ERROR|panicked|SUMMARY' ; \
	  [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; echo "fuzz $$t: ok"; \
	done

## The cost model: one simulated hour of the probing poller over idle repos, counted and priced.
cost:
	$(CARGO) test -q --release -p gitferry-tests --test poll -- --ignored --nocapture cost_model

## Cache restore/commit figures on the fs store and moto (issue 4's benchmark).
bench-cache: deps
	bash bench/cache.sh

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@# Issue 16: no product function over ~80 lines without a reason next to it (a report).
	@python3 infra/ci/long_fns.py

## The SAM template is checked like code (issue 9). cfn-lint validates template.yaml offline
## (SAM resources against SAM's schemas); the SAM translator then expands it as CloudFormation
## will, and cfn-lint checks the expanded resources too (Lambda limits, generated roles, API
## stage), which cfn-lint 1.58 no longer does by itself. Any error or warning fails; a check may
## only be ignored in template.yaml's Metadata, with the reason next to it. Findings on the
## expanded file name lines of target/template.transformed.json.
CFN_LINT_VERSION := 1.58.0
SAM_TRANSLATOR_VERSION := 1.115.0
cfn-lint: deps
	@$(VENV)/bin/python -c 'import sys, cfnlint.version, samtranslator; sys.exit(cfnlint.version.__version__ != "$(CFN_LINT_VERSION)" or samtranslator.__version__ != "$(SAM_TRANSLATOR_VERSION)")' 2>/dev/null || { \
	  echo "installing cfn-lint==$(CFN_LINT_VERSION) aws-sam-translator==$(SAM_TRANSLATOR_VERSION) into $(VENV)"; \
	  $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "cfn-lint==$(CFN_LINT_VERSION)" "aws-sam-translator==$(SAM_TRANSLATOR_VERSION)"; }
	$(VENV)/bin/cfn-lint template.yaml
	@mkdir -p target
	$(VENV)/bin/python infra/ci/sam_translate.py template.yaml target/template.transformed.json
	$(VENV)/bin/cfn-lint target/template.transformed.json

## The three Lambda bootstraps, built with cargo-lambda (PyPI; it brings zig, which links
## against the glibc of provided.al2023). ARCH=x86_64 (default: the only Rust std on these
## machines) or ARCH=arm64 (needs `rustup target add aarch64-unknown-linux-gnu`, see
## infra/DEPLOY.md). Output: target/lambda/{webhook,poll,sync}/bootstrap.
CARGO_LAMBDA_VERSION := 1.9.2
ARCH ?= x86_64
package: deps
	@[ "$$($(VENV)/bin/cargo-lambda lambda --version 2>/dev/null | cut -d' ' -f2)" = "$(CARGO_LAMBDA_VERSION)" ] || { \
	  echo "installing cargo-lambda==$(CARGO_LAMBDA_VERSION) into $(VENV)"; \
	  $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check "cargo-lambda==$(CARGO_LAMBDA_VERSION)"; }
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(CARGO) lambda build --release $(if $(filter arm64,$(ARCH)),--arm64,--x86-64) --bin webhook --bin poll --bin sync
	@for f in webhook poll sync; do \
	  awk -v f=$$f -v b=$$(stat -c %s target/lambda/$$f/bootstrap) 'BEGIN { printf "%-8s %5.1f MiB  target/lambda/%s/bootstrap ($(ARCH))\n", f, b / 1048576, f }'; \
	done

fmt:
	$(CARGO) fmt --all
