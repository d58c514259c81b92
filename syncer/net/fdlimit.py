"""The open-files limit: a daemon holds a descriptor per connection, watch and open file, and
the soft limit is often 1024 while the hard limit is far higher."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

CEILING = 1 << 20  # used when the hard limit is unlimited (the kernel's nr_open default)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:
            log.info("cannot raise the open-files limit from %d to %d: %s", soft, target, e)
    return soft
