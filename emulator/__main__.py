"""`python -m emulator`: start the emulator (see `emulator.server.main`)."""

from __future__ import annotations

from emulator.server import main

if __name__ == "__main__":  # not when multiprocessing re-imports this module in a worker
    raise SystemExit(main())
