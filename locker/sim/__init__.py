"""Developer tools that never ship on a locker: the story simulator, the test/dev broker
launcher and simulated cabinets."""
