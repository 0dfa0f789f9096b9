"""The server side: provisioning, lockerctl, the MQTT client of the contract, QR rendering."""
