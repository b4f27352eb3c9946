"""``python3 -m fastdns.testing.fakeapi``: the standalone fake API server (see cli)."""

import sys

from fastdns.testing.fakeapi.cli import main

sys.exit(main())
