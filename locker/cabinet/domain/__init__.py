"""The pure core of the cabinet: immutable state, the state machine, remote commands and the
throttle. No I/O, no clock, no threads (checked by import-linter)."""
