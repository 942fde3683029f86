import sys

from ebt._entry import main

sys.exit(main())
