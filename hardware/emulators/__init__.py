"""Emulators for tests and the simulator: the KR-CU16 bus on a pty, and simulated doors."""
