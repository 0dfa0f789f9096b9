"""The cabinet's front panel (DESIGN section 12): what a person at the door sees and hears.

``view`` projects the controller's transitions into immutable views, ``hub`` carries them to the
surfaces (``web`` page, LCD, voice, locator LEDs) without ever making the controller wait, and
``texts`` holds every message in every language. ``config`` is the ``[panel]`` table.
"""
