"""``python -m producer.simulator``: the ``simulate`` command on its own."""

import sys

from producer.simulator.cli import main

sys.exit(main())
