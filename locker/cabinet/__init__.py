"""lockerd, the cabinet daemon: the pure domain, the SQLite store, the controller thread, the
MQTT link, configuration, assembly and the command-line entry point."""
