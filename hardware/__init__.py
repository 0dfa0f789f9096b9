"""Device drivers: gpiozero locks, doors, keypad and feedback; serial scanner and keypad;
RS-485 lock-control boards and their emulator. Depends only on ``locker.ports``."""
