import logging

from syncer.daemon import LostConnectionWrites


def record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("asyncio", logging.WARNING, __file__, 1, msg, None, None)


def test_lost_connection_write_warnings_are_dropped_others_kept():
    f = LostConnectionWrites()
    assert not f.filter(record("socket.send() raised exception."))
    assert not f.filter(record("SSL connection is closed"))
    assert f.filter(record("Task was destroyed but it is pending!"))
