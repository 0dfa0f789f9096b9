"""``python -m locker.sim``: the simulator behind ``make simulate``."""

import sys

from locker.sim.story import main

sys.exit(main())
