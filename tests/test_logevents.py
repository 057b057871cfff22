"""The log event catalogue (scep_server/logevents.py) against the source, and the README's section from it."""
from __future__ import annotations

from collections import defaultdict

from scep_server import logevents
from tests import logscan

README = logscan.ROOT / "README.md"


def _sites() -> dict[str, list[logscan.Call]]:
    """Every catalogued name -> the calls that emit it; fails on a call whose name is computed but not listed."""
    by_name: dict[str, list[logscan.Call]] = defaultdict(list)
    unlisted = []
    for call in logscan.calls():
        if call.name is not None:
            by_name[call.name].append(call)
        elif call.site in logevents.DYNAMIC:
            for name in logevents.DYNAMIC[call.site]:
                by_name[name].append(call)
        else:
            unlisted.append(f"{call.path}:{call.line}: {call.expression}")
    assert not unlisted, ("log event names computed at these calls: list the names they produce in "
                          f"scep_server/logevents.py DYNAMIC: {unlisted}")
    return by_name


def test_every_emitted_event_is_catalogued_with_its_level_and_fields():
    problems = []
    for name, calls in _sites().items():
        event = logevents.BY_NAME.get(name)
        if event is None:
            problems.append(f"{name} ({calls[0].path}:{calls[0].line}) is not in the catalogue")
            continue
        for call in calls:
            where = f"{call.path}:{call.line}"
            if call.level != event.level:
                problems.append(f"{name} at {where} is logged at {call.level}, catalogued at {event.level}")
            if call.open_fields:
                problems.append(f"{name} at {where} passes **fields the catalogue cannot check")
            if missing := call.fields - set(event.fields):
                problems.append(f"{name} at {where} passes fields not in the catalogue: {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_the_catalogue_has_no_stale_event_or_field():
    sites = _sites()
    problems = [f"{e.name} is catalogued but never logged" for e in logevents.EVENTS if e.name not in sites]
    for event in logevents.EVENTS:
        passed = set().union(*(c.fields for c in sites.get(event.name, [])))
        if event.name in sites and (unused := set(event.fields) - passed):
            problems.append(f"{event.name}: catalogued fields no call passes: {sorted(unused)}")
    real = {call.site for call in logscan.calls() if call.name is None}
    problems += [f"DYNAMIC lists {site}, which is no call in the source" for site in logevents.DYNAMIC
                 if site not in real]
    assert not problems, "\n".join(problems)


def test_computed_names_cover_every_value_they_can_take():
    from crl.check import FailureKind
    from scep_server.binding.devices import TRANSITIONS
    from scep_server.ca.status import DEFAULT_KIND

    assert set(logevents.DYNAMIC["crl/check.py:f'crl.check.{f.kind.value}'"]) == {
        f"crl.check.{kind.value}" for kind in FailureKind}
    assert set(logevents.DYNAMIC["scep_server/binding/devices.py:f'device.{action}'"]) == {
        f"device.{action}" for action in TRANSITIONS}
    assert set(logevents.DYNAMIC["scep_server/ca/revocation.py:kind.value"]) == {
        kind.value for kind in DEFAULT_KIND.values()}


def test_module_loggers_are_named_so_the_scan_sees_their_calls():
    assert [(path, name) for path, name in logscan.module_loggers() if not logscan.LOGGER_NAME.fullmatch(name)] == []
    assert len(logscan.module_loggers()) > 20
    assert logscan.module_loggers([logscan.ROOT / "otp" / "service.py"]) == [("otp/service.py", "log")]


def test_the_scan_finds_structlog_and_stdlib_calls_with_their_fields(tmp_path):
    source = tmp_path / "sample.py"
    source.write_text(
        "import logging, structlog\n"
        "log = structlog.get_logger('x')\n"
        "logger = logging.getLogger(__name__)\n"
        "def f(self, kind, fields):\n"
        "    log.info('a.done', count=1, who='me')\n"
        "    logger.warning('b.seen', extra={'source': 1, 'user': 2}, exc_info=True)\n"
        "    self._log.exception(f'c.{kind}')\n"
        "    log.error('d.open', **fields)\n"
        "    other.info('not.a.logger', x=1)\n"
        "    access_line(method='GET', status=200)\n")
    found = {(c.name, c.expression): c for c in logscan.calls([source])}
    assert set(found) == {("a.done", "'a.done'"), ("b.seen", "'b.seen'"), (None, "f'c.{kind}'"),
                          ("d.open", "'d.open'"), ("http.access", "'http.access'")}
    assert found["a.done", "'a.done'"].fields == {"count", "who"} and found["a.done", "'a.done'"].level == "info"
    assert found["b.seen", "'b.seen'"].fields == {"source", "user", "exception"}
    assert found[None, "f'c.{kind}'"].level == "error" and found[None, "f'c.{kind}'"].fields == {"exception"}
    assert found["d.open", "'d.open'"].open_fields
    assert found["http.access", "'http.access'"].fields == {"method", "status"}


def test_readme_lists_the_catalogue():
    text = README.read_text()
    start, end = text.index(logevents.BEGIN), text.index(logevents.END) + len(logevents.END)
    assert text[start:end] == logevents.readme_block(), (
        "README.md's log events are out of date: replace the block with `python -m scep_server.logevents`")
