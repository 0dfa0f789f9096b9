"""pySerial inputs: the QR scanner and the serial keypad."""
