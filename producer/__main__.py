"""``python -m producer``: the same as the ``oneroster-cdc`` console script."""

import sys

from producer.launch import main

if __name__ == "__main__":  # not when a sync.workers process (spawned) imports it
    sys.exit(main())
