"""``python -m producer``: the same as the ``oneroster-cdc`` console script."""

import sys

from producer.launch import main

sys.exit(main())
