"""RS-485 lock-control boards: the KR-CU16 frame codec and the bus driver."""
