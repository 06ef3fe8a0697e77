"""The conductor service: drives nodes through their state machine with hardware drivers."""
