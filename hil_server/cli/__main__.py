import sys

from hil_server.cli import main

sys.exit(main())
