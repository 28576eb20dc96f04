"""NCRONTAB schedules as the timer trigger reads them (UTC).

Six fields `{second} {minute} {hour} {day} {month} {day-of-week}`; five fields (no seconds) are also
accepted, as the host does. Each field takes `*`, `n`, `a-b`, `*/n`, `a-b/n`, `a/n` and comma lists;
month and day-of-week also take names (`Jan`, `Mon`). Day-of-month and day-of-week must both match
(NCrontab semantics, unlike Vixie cron's "either"). A .NET TimeSpan (`hh:mm:ss`) is a fixed interval,
which the host accepts on App Service plans.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .config import DevHostError, parse_timespan

_MONTHS = {n: i for i, n in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], start=1)}
_DAYS = {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (low, high, names) per field
_FIELDS = [(0, 59, None), (0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS), (0, 7, _DAYS)]
_FIELD_NAMES = ["second", "minute", "hour", "day", "month", "day-of-week"]


def _value(text: str, low: int, high: int, names, expr: str, fname: str) -> int:
    key = text.strip().lower()
    if names and key[:3] in names and not key.isdigit():
        return names[key[:3]]
    if not key.isdigit():
        raise DevHostError(f"'{expr}' is not a valid NCRONTAB expression: bad {fname} value {text!r}")
    value = int(key)
    if not low <= value <= high:
        raise DevHostError(f"'{expr}' is not a valid NCRONTAB expression: {fname} {value} outside {low}-{high}")
    return value


def _parse_field(text: str, index: int, expr: str) -> frozenset[int]:
    low, high, names = _FIELDS[index]
    fname = _FIELD_NAMES[index]
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise DevHostError(f"'{expr}' is not a valid NCRONTAB expression: empty item in {fname}")
        step = 1
        stepped = "/" in item
        if stepped:
            item, step_text = item.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise DevHostError(f"'{expr}' is not a valid NCRONTAB expression: bad step in {fname}")
            step = int(step_text)
        if item == "*":
            start, end = low, (6 if index == 5 else high)
        elif "-" in item:
            a, b = item.split("-", 1)
            start, end = _value(a, low, high, names, expr, fname), _value(b, low, high, names, expr, fname)
            if end < start:
                raise DevHostError(f"'{expr}' is not a valid NCRONTAB expression: range {item} in {fname}")
        else:
            start = _value(item, low, high, names, expr, fname)
            end = (6 if index == 5 else high) if stepped else start
        values.update(range(start, end + 1, step))
    if index == 5 and 7 in values:      # 7 is also Sunday
        values.discard(7)
        values.add(0)
    return frozenset(values)


class Schedule:
    """A parsed timer schedule; `next_after(t)` gives the first occurrence strictly after t (UTC)."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.interval: float | None = None
        fields = expression.split()
        if len(fields) == 1 and ":" in expression:
            self.interval = parse_timespan(expression, "schedule")
            if self.interval <= 0:
                raise DevHostError(f"'{expression}' is not a valid schedule: interval must be positive")
            return
        if len(fields) == 5:
            fields = ["0"] + fields
        if len(fields) != 6:
            raise DevHostError(
                f"'{expression}' is not a valid NCRONTAB expression: expected six fields "
                f"{{second}} {{minute}} {{hour}} {{day}} {{month}} {{day-of-week}}")
        (self.seconds, self.minutes, self.hours, self.days, self.months,
         self.dows) = (sorted(_parse_field(f, i, expression)) for i, f in enumerate(fields))
        self._days, self._months, self._dows = set(self.days), set(self.months), set(self.dows)

    def next_after(self, after: datetime) -> datetime:
        if after.tzinfo is None:
            after = after.replace(tzinfo=timezone.utc)
        if self.interval is not None:
            return after + timedelta(seconds=self.interval)
        t = after.replace(microsecond=0) + timedelta(seconds=1)
        day = t.replace(hour=0, minute=0, second=0)
        first = True
        for _ in range(366 * 8):   # eight years covers every satisfiable schedule (Feb 29 on a weekday)
            if (day.month in self._months and day.day in self._days
                    and (day.weekday() + 1) % 7 in self._dows):
                found = self._time_in_day(day, t if first else None)
                if found is not None:
                    return found
            day += timedelta(days=1)
            first = False
        raise DevHostError(f"'{self.expression}' never occurs")

    def _time_in_day(self, day: datetime, not_before: datetime | None) -> datetime | None:
        h0, m0, s0 = ((not_before.hour, not_before.minute, not_before.second) if not_before else (0, 0, 0))
        for h in self.hours:
            if h < h0:
                continue
            for m in self.minutes:
                if h == h0 and m < m0:
                    continue
                for s in self.seconds:
                    if h == h0 and m == m0 and s < s0:
                        continue
                    return day.replace(hour=h, minute=m, second=s)
        return None
