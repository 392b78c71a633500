#!/usr/bin/env python
"""Same as ``genlab-compare``: gather a sweep's results.json files into a table and plots.

    python scripts/compare.py <sweep dir> [--quality-n 1000] [--no-quality] [--wandb]
"""

import sys

from genlab.compare import main

if __name__ == "__main__":
    sys.exit(main())
