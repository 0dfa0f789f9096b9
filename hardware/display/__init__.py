"""Character displays on the cabinet's front panel."""
