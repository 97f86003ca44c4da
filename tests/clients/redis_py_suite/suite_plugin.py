"""pytest plugin loaded (-p suite_plugin) in every run of
tests/clients/redis_py_suite.sh, direct and through keyway alike.

1. requirepass guard. After each test it asks the backend redis-server
   itself (SUITE_BACKEND=host:port), over a connection opened at session
   start, whether `requirepass` is set. Through keyway a test that sets it
   with CONFIG SET cannot undo it in its teardown: its AUTH is answered by
   keyway (keyway checks its own users), so the backend keeps the password,
   and every backend connection keyway opens afterwards is refused, which
   would fail every later test. The guard's connection was authenticated
   before, so it can reset the password; each reset is logged to
   SUITE_GUARD_LOG. Against Redis directly the tests reset it themselves.

2. xpass marking. JUnit XML reports an unexpected pass (xpass) as a plain
   pass; the plugin adds the property `xpassed` so the comparison can count
   passes as pytest's own summary line does.
"""
import os

import pytest
import redis

_conn = None
_log = None


def pytest_sessionstart(session):
    global _conn, _log
    addr = os.environ.get("SUITE_BACKEND")
    if not addr:
        return
    host, port = addr.rsplit(":", 1)
    _conn = redis.Redis(host=host, port=int(port), single_connection_client=True,
                        socket_timeout=5)
    _conn.ping()
    _log = open(os.environ.get("SUITE_GUARD_LOG", os.devnull), "a")


def pytest_sessionfinish(session):
    if _log is not None:
        _log.close()


def pytest_runtest_logfinish(nodeid, location):
    if _conn is None:
        return
    for attempt in (1, 2):
        try:
            cfg = _conn.config_get("requirepass")  # redis-py decodes the keys, not the values
            pw = cfg.get("requirepass") or cfg.get(b"requirepass")
            if pw:
                _conn.config_set("requirepass", "")
                _log.write(f"{nodeid}: left requirepass={pw!r} on the backend; reset\n")
                _log.flush()
            return
        except redis.ConnectionError as e:
            # a CLIENT KILL test closed this connection too: the retry reconnects
            if attempt == 2:
                _log.write(f"{nodeid}: guard error {e!r}\n")
                _log.flush()
        except Exception as e:  # never break the run
            _log.write(f"{nodeid}: guard error {e!r}\n")
            _log.flush()
            return


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed and hasattr(report, "wasxfail"):
        # junitxml writes the item's properties with the teardown report
        item.user_properties.append(("xpassed", "1"))
