"""pytest fixtures for the NAT lab. Import them into a test module:

    from tests.natlab.fixtures import natlab  # noqa: F401

`natlab(nat1="cone", nat2="symmetric", udp_timeout=None)` builds a lab with a fresh prefix and
returns it; every lab is torn down in the finaliser, also when the test fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.natlab.lab import NatLab, skip_reason


@pytest.fixture
def natlab(tmp_path: Path) -> Iterator[Callable[..., NatLab]]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    labs: list[NatLab] = []

    def make(nat1: str = "cone", nat2: str | None = None, udp_timeout: float | None = None) -> NatLab:
        lab = NatLab(tmp_path, nat1, nat2 or nat1, udp_timeout)
        labs.append(lab)
        return lab.up()

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()
