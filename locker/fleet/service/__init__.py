"""The fleet service (DESIGN section 13): ``lockerctl serve``, its database, REST API and alarms.

Needs the ``[fleet]`` extra; the cabinet never imports it (an import-linter contract).
"""
