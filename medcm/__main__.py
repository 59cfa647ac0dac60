import sys

from medcm.cli import main

sys.exit(main())
