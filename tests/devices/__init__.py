"""Simulated hardware for the flashing tests: an ESP32 serial ROM bootloader (esp32_sim) and a
MicroPython board (micropython_board), both on pseudo-terminals so the real esptool/mpremote talk
to them exactly as to a USB serial adapter."""
