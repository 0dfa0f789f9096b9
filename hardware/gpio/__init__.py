"""GPIO devices through gpiozero: locks and door sensors, the pulse scheduler, the matrix
keypad, buzzer and LEDs, and the pin-factory choice."""
