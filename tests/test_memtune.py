import platform
import sys

import pytest

from syncer.memtune import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_settings_take_effect_on_glibc():
    assert tune_malloc() is True
    assert tune_malloc() is True  # idempotent: the daemon may be started in-process twice (tests)
