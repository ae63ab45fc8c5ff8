# Two commands matter: `make sim` (the firmware under MicroPython against a simulated MGM111 and a
# local broker) and `make test`. The rest drives esptool/mpremote for a real device.
PY ?= python3
MQTT_PORT ?= 1883
VERSION ?= 8
FLASH_ARGS = $(if $(PORT),--port $(PORT)) $(if $(IMAGE),--image $(IMAGE))
UMQTT = build/lib/umqtt/simple.py
STAMP = build/.deps-$(shell cat requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: deps test sim bench flash backup restore deploy config console decode clean

deps: $(STAMP) $(UMQTT)
	@command -v mosquitto >/dev/null || command -v /usr/sbin/mosquitto >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mosquitto; \
	  else echo "mosquitto is missing: sudo apt-get install mosquitto"; exit 1; fi; }

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
	$(PY) tools/run_sim.py --mqtt-port $(MQTT_PORT) --version $(VERSION)

bench: deps
	$(PY) bench/run.py

decode:
	$(PY) tools/decode.py $(HEX)

flash backup restore deploy config console: deps
	$(PY) tools/flash.py $@ $(FLASH_ARGS)

clean:
	rm -rf build .pytest_cache .hypothesis
