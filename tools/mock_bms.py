"""Mock BMS client of an eis-hil server: the same as ``eis-hil client``.

.venv/bin/python tools/mock_bms.py 127.0.0.1 7700 --control pause --count 0
.venv/bin/python tools/mock_bms.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hil_server.cli.client import main

if __name__ == "__main__":
    sys.exit(main())
