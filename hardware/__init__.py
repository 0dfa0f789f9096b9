"""Device drivers: gpiozero locks, doors, keypad and feedback (``gpio``); serial scanner and
keypad (``serial_io``); RS-485 lock-control boards (``boards``); emulators of those boards and
simulated doors (``emulators``). Imports nothing of ``locker`` but ``locker.ports``."""
