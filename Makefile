# podvisor: `make serve` sets everything up and runs the daemon; `make test` runs every test.
GUEST := build/guest
.PHONY: deps build guest serve test unit e2e clean

deps:
	@bash scripts/install-deps.sh

node_modules: package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

build: node_modules
	npx tsc -p tsconfig.json

guest: deps
	bash guest/build.sh $(GUEST)

serve: deps build guest
	node dist/src/cli/main.js serve $(ARGS)

test: deps build guest
	bash scripts/run-tests.sh

unit: build
	npx jest --selectProjects unit

clean:
	rm -rf dist build
