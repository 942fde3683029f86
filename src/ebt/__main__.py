import sys

from ebt.cli import main

sys.exit(main())
