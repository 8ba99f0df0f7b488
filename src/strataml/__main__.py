"""`python -m strataml` is the `strataml` command."""

import sys

from strataml.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
