# Two commands matter: `make sim` (the firmware under MicroPython against a simulated MGM111 and a
# local broker) and `make test`. The rest drives esptool/mpremote for a real device.
PY ?= python3
MQTT_PORT ?= 1883
VERSION ?= 8
FLASH_ARGS = $(if $(PORT),--port $(PORT)) $(if $(IMAGE),--image $(IMAGE))
UMQTT = build/lib/umqtt/simple.py
STAMP = build/.deps-$(shell cat requirements-dev.txt | cksum | cut -d' ' -f1)
MP32 = node_modules/.package-lock.json

.PHONY: deps test sim bench flash backup restore deploy config console decode clean ota ota-key

deps: $(STAMP) $(UMQTT) $(MP32)
	@command -v mosquitto >/dev/null || command -v /usr/sbin/mosquitto >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mosquitto; \
	  else echo "mosquitto is missing: sudo apt-get install mosquitto"; exit 1; fi; }

# The 32-bit MicroPython (wasm32, runs under node) for the 32-bit bench figures and tests/test_32bit.py.
# npm writes node_modules/.package-lock.json on every install: newer than the lock file = up to date.
$(MP32): package-lock.json
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error; else \
	  echo "WARNING: node and npm are missing (sudo apt-get install nodejs npm): make test and make bench need them"; fi

$(STAMP): requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	@mkdir -p build && touch $@

# umqtt.simple is an sdist pip cannot install: download it and take the module out (testing-notes.md).
$(UMQTT):
	@rm -rf build/pip-tmp && mkdir -p build/pip-tmp build/lib/umqtt
	@TMPDIR=$(CURDIR)/build/pip-tmp $(PY) -m pip download -q --no-deps --no-clean \
	  -d build/pip-tmp micropython-umqtt.simple==1.3.4 >/dev/null 2>&1 || true
	@src=$$(find build/pip-tmp -path '*umqtt/simple.py' | head -n 1); \
	  test -n "$$src" || { echo "could not fetch micropython-umqtt.simple from PyPI"; exit 1; }; \
	  cp "$$src" $@ && rm -rf build/pip-tmp

test: deps
	$(PY) -m pytest -q tests

sim: deps
	$(PY) sim/run_sim.py --mqtt-port $(MQTT_PORT) --version $(VERSION)

bench: deps
	$(PY) bench/run.py

decode:
	$(PY) tools/decode.py $(HEX)

flash backup restore deploy config console: deps
	$(PY) tools/flash.py $@ $(FLASH_ARGS)

# Updates over the air (tools/ota.py): publish the app to the broker; INSTALL=1 also installs it.
ota: deps
	$(PY) tools/ota.py publish $(if $(INSTALL),--install) $(OTA_ARGS)

ota-key:
	$(PY) tools/ota.py keygen

clean:
	rm -rf build node_modules .pytest_cache .hypothesis
