"""`python -m tunnel` is the same as the `tunnel` command."""

import sys

from tunnel.cli import main

sys.exit(main())
