"""Where the repository and the binaries under test are.

The package is used from the repository it lives in (the test scripts put tests/support on the venv's path
rather than copying it), so the repository root is found from this file.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def target_dir() -> Path:
    """cargo's target directory: CARGO_TARGET_DIR (relative to the repository when relative), else target/."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target if target.is_absolute() else ROOT / target


def proxy_binary() -> Path:
    """The quic-proxy binary under test: QUIC_PROXY_BIN, else the debug build cargo puts in its target dir."""
    explicit = os.environ.get("QUIC_PROXY_BIN")
    if explicit:
        return Path(explicit)
    return target_dir() / "debug" / "quic-proxy"
