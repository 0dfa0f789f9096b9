"""Parcel-locker controller: the lockerd daemon and the lockerctl toolkit."""

__version__ = "0.1.0"
