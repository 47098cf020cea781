"""schemathesis hooks for `cargo xtask api-fuzz` (schemathesis 4.32.5).

Loaded through the environment: `SCHEMATHESIS_HOOKS=<absolute path of this
file>` (schemathesis' `core/hooks.py: load_from_env`, called when the project
configuration is built; a value containing a path separator or ending in
`.py` is executed as a file, relative to the working directory).

JSON Schema cannot say that `total_tokens` is the sum of two other fields, or
that a timestamp is not in the future, so a schema-valid usage record is often
one the service must refuse (docs/errors.md). This repairs the generated
*positive* request bodies so that they satisfy every rule of SPEC §1 and
docs/errors.md that the schema cannot express; `tests/api/schemathesis.toml`
then requires a 2xx for them: positive data proves acceptance.

The repair is a `map_case` hook, not `map_body`: a `Case` knows how each of
its parts was generated (`case.meta.components[...].mode`), a body alone does
not. Only a body generated in positive mode is touched; a negative body is
sent as generated so that the negative phase still tests refusals. (After the
hook, schemathesis validates the changed body against the schema again and
sets the case's mode from that; every repair keeps the body schema-valid.)
The Examples phase runs no case hooks: the schema's `example`s are sent as
written, and must be accepted as they are.

Repairs, each a rule the schema cannot express:
- usage: total_tokens = prompt_tokens + completion_tokens (the sum kept at
  most 2^63 - 1), cached_tokens <= prompt_tokens, cached_tokens +
  cache_write_tokens <= prompt_tokens, reasoning_tokens <= completion_tokens;
- performance: time_to_first_token_ms <= latency_ms;
- timestamp: a valid RFC 3339 date-time whose UTC form is in years
  0001-9999 and not in the future is kept; any other (a leap second
  included) is replaced by a time a minute ago;
- provider: not blank once trimmed (Rust's `str::trim`, Unicode White_Space);
- metadata: no U+0000 in keys or string values (PostgreSQL's jsonb), at most
  16 KiB serialized;
- PUT /admin/v1/orgs/{org}/rate-limit: `max_requests` + `window_secs`
  (+ `burst_size`) whose bucket ceil(window / max_requests) * (max_requests +
  burst_size) is deeper than 2^51 us (422 invalid_policy): the window is
  shortened to the longest that fits (the burst dropped when none does);
- PUT /admin/v1/orgs/{org}/prices (body) and DELETE (query): a provider not
  blank once trimmed, and an `effective_from` whose UTC form is in the years
  0001-9999 (any other valid date-time is replaced by 2026-01-01T00:00:00Z).
- GET /v1/usage/records|summary|export (query, `read`): `organization_id`
  set (the run's admin key must name one); `from`/`to` Unix seconds or
  RFC 3339 in the years 0001-9999 (others dropped, `from` of a summary
  replaced), `from` not after `to`; no `cursor` or `page` (only the service
  makes those); a summary's `limit` within its bucket width's maximum and a
  `1m` range of at most 6 hours.

Set `API_FUZZ_NO_REPAIR` to a comma-separated list of repair names
(`tokens`, `timestamp`, ...; see `REPAIRS`) to switch repairs off: a planted
fault, to see the positive_data_acceptance check fail.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import schemathesis
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation

MAX_TOKENS = 2**63 - 1
MAX_METADATA_BYTES = 16 * 1024
MAX_BUCKET_MICROS = 2**51
#: Characters Rust's `str::trim` removes (Unicode White_Space).
RUST_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

REPAIRS = ("tokens", "performance", "timestamp", "provider", "metadata", "policy", "price", "read")
READ_PATHS = ("/v1/usage/records", "/v1/usage/summary", "/v1/usage/export")
#: A summary's most buckets per page, by width (docs/api.md).
BUCKET_LIMITS = {"1m": 1440, "1h": 168, "1d": 31}
DISABLED = {name.strip() for name in os.environ.get("API_FUZZ_NO_REPAIR", "").split(",") if name.strip()}
UNKNOWN = DISABLED - set(REPAIRS)
if UNKNOWN:
    raise ValueError(f"API_FUZZ_NO_REPAIR: unknown repair(s) {sorted(UNKNOWN)}; known: {REPAIRS}")


def enabled(repair: str) -> bool:
    return repair not in DISABLED


@schemathesis.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    operation = case.operation
    if (
        enabled("price")
        and operation.method.upper() == "DELETE"
        and operation.path == "/admin/v1/orgs/{org}/prices"
        and is_positive(case, ParameterLocation.QUERY)
        and isinstance(case.query, dict)
    ):
        case.query = repair_price(dict(case.query))
        return case
    if (
        enabled("read")
        and operation.method.upper() == "GET"
        and operation.path in READ_PATHS
        and is_positive(case, ParameterLocation.QUERY)
    ):
        case.query = repair_read(operation.path, dict(case.query or {}))
        return case
    if not body_is_positive(case):
        return case
    operation = case.operation
    method, path = operation.method.upper(), operation.path
    body = case.body
    if method == "POST" and path == "/v1/usage" and isinstance(body, dict):
        case.body = repair_record(body)
    elif method == "POST" and path == "/v1/usage/batch" and isinstance(body, dict):
        records = body.get("records")
        if isinstance(records, list):
            case.body = {**body, "records": [repair_record(r) if isinstance(r, dict) else r for r in records]}
    elif method == "PUT" and path == "/admin/v1/orgs/{org}/rate-limit" and isinstance(body, dict):
        if enabled("policy"):
            case.body = repair_policy(body)
    elif method == "PUT" and path == "/admin/v1/orgs/{org}/prices" and isinstance(body, dict):
        if enabled("price"):
            case.body = repair_price(dict(body))
    return case


def repair_price(fields: dict[str, Any]) -> dict[str, Any]:
    """A price's provider and time, as `repair_record` does for records."""
    if isinstance(fields.get("provider"), str) and not fields["provider"].strip(RUST_WHITESPACE):
        fields["provider"] = "openai"
    if isinstance(fields.get("effective_from"), str) and parse_utc(fields["effective_from"]) is None:
        fields["effective_from"] = "2026-01-01T00:00:00Z"
    return fields



def read_time(value: Any) -> datetime | None:
    """A read endpoint's time: Unix seconds or RFC 3339, years 0001-9999 (UTC)."""
    if not isinstance(value, str):
        return None
    if re.fullmatch(r"-?[0-9]+", value):
        try:
            t = datetime.fromtimestamp(int(value), timezone.utc)
        except (OverflowError, OSError, ValueError):
            return None
        return t
    return parse_utc(value)


def repair_read(path: str, query: dict[str, Any]) -> dict[str, Any]:
    query.pop("cursor", None)
    query.pop("page", None)
    if not query.get("organization_id"):
        query["organization_id"] = "acme"
    times = {}
    for key in ("from", "to"):
        if key in query:
            t = read_time(query[key])
            if t is None:
                del query[key]
            else:
                times[key] = t
    if path == "/v1/usage/summary" and "from" not in times:
        query["from"] = "2026-01-01T00:00:00Z"
        times["from"] = datetime(2026, 1, 1, tzinfo=timezone.utc)
    if "from" in times and "to" in times and times["from"] > times["to"]:
        query["from"], query["to"] = query["to"], query["from"]
        times["from"], times["to"] = times["to"], times["from"]
    if path == "/v1/usage/summary":
        width = query.get("bucket_width", "1d")
        most = BUCKET_LIMITS.get(width, 31)
        if isinstance(query.get("limit"), int) and query["limit"] > most:
            query["limit"] = most
        if width == "1m":
            end = times.get("to") or datetime.now(timezone.utc)
            if end - times["from"] > timedelta(hours=5):
                start = max(end - timedelta(hours=5), datetime(1, 1, 2, tzinfo=timezone.utc))
                query["from"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
                if start > end:
                    query["to"] = query["from"]
    return query


def body_is_positive(case: schemathesis.Case) -> bool:
    """Whether the case's body was generated in positive mode."""
    return is_positive(case, ParameterLocation.BODY)


def is_positive(case: schemathesis.Case, location: ParameterLocation) -> bool:
    """Whether the case's part at `location` was generated in positive mode."""
    meta = case.meta
    if meta is None:
        return False
    component = meta.components.get(location)
    return component is not None and component.mode == GenerationMode.POSITIVE


def repair_record(record: dict[str, Any]) -> dict[str, Any]:
    record = json.loads(json.dumps(record))  # a deep copy: the generated value may be shared
    if enabled("tokens") and isinstance(record.get("usage"), dict):
        repair_usage(record["usage"])
    if enabled("performance") and isinstance(record.get("performance"), dict):
        repair_performance(record["performance"])
    if enabled("timestamp") and "timestamp" in record:
        record["timestamp"] = repair_timestamp(record["timestamp"])
    if enabled("provider") and isinstance(record.get("provider"), str):
        if not record["provider"].strip(RUST_WHITESPACE):
            record["provider"] = "openai"
    if enabled("metadata") and isinstance(record.get("metadata"), dict):
        record["metadata"] = repair_metadata(record["metadata"])
    return record


def as_int(value: Any) -> int | None:
    """`value` as a whole number, as JSON Schema (and the service) reads it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def repair_usage(usage: dict[str, Any]) -> None:
    prompt = as_int(usage.get("prompt_tokens"))
    completion = as_int(usage.get("completion_tokens"))
    if prompt is None or completion is None or prompt < 0 or completion < 0:
        return
    if prompt + completion > MAX_TOKENS:
        completion = MAX_TOKENS - min(prompt, MAX_TOKENS)
        usage["completion_tokens"] = completion
    usage["total_tokens"] = prompt + completion
    cached = as_int(usage.get("cached_tokens"))
    if cached is not None and cached > prompt:
        usage["cached_tokens"] = cached = prompt
    cache_write = as_int(usage.get("cache_write_tokens"))
    if cache_write is not None and cache_write > prompt - (cached or 0):
        usage["cache_write_tokens"] = prompt - (cached or 0)
    reasoning = as_int(usage.get("reasoning_tokens"))
    if reasoning is not None and reasoning > completion:
        usage["reasoning_tokens"] = completion


def repair_performance(performance: dict[str, Any]) -> None:
    latency = performance.get("latency_ms")
    ttft = performance.get("time_to_first_token_ms")
    numbers = (int, float)
    if (
        isinstance(latency, numbers)
        and isinstance(ttft, numbers)
        and not isinstance(latency, bool)
        and not isinstance(ttft, bool)
        and ttft > latency
    ):
        performance["time_to_first_token_ms"] = latency


RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


def parse_utc(value: str) -> datetime | None:
    """`value` as an aware UTC datetime, when it is an RFC 3339 date-time the service must accept."""
    m = RFC3339.fullmatch(value)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    # Leap seconds are valid RFC 3339 but not representable here: replaced.
    if second > 59:
        return None
    offset = timedelta()
    if m.group(9):
        hours, minutes = int(m.group(10)), int(m.group(11))
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes) * (1 if m.group(9) == "+" else -1)
    try:
        local = datetime(year, month, day, hour, minute, second, tzinfo=timezone(offset))
        return local.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        # Year 0000, day 31 of a 30-day month, or a UTC form outside years 0001-9999.
        return None


def repair_timestamp(value: Any) -> Any:
    now = datetime.now(timezone.utc)
    if isinstance(value, str):
        parsed = parse_utc(value)
        if parsed is not None and parsed <= now:
            return value
    # A recent past time: a minute ago (whole seconds keep it readable in reports).
    return (now - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def strip_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, list):
        return [strip_nul(v) for v in value]
    if isinstance(value, dict):
        return {strip_nul(k): strip_nul(v) for k, v in value.items()}
    return value


def repair_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    metadata = strip_nul(metadata)
    # serde_json's compact form; Python writes floats differently, so keep a margin.
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode())
    if size > MAX_METADATA_BYTES - 1024:
        return {}
    return metadata


def bucket_micros(max_requests: int, window_secs: int, burst_size: int) -> int:
    """`ratelimit::Policy::new`'s bucket depth C*T in microseconds."""
    interval = max(1, -(-(window_secs * 1_000_000_000) // (max_requests * 1000)))
    return interval * (max_requests + burst_size)


def repair_policy(body: dict[str, Any]) -> dict[str, Any]:
    max_requests = as_int(body.get("max_requests"))
    window = as_int(body.get("window_secs"))
    burst = as_int(body.get("burst_size", 0))
    if max_requests is None or window is None or burst is None or max_requests < 1 or window < 1 or burst < 0:
        return body
    if bucket_micros(max_requests, window, burst) <= MAX_BUCKET_MICROS:
        return body
    body = dict(body)
    # The longest whole-second window whose interval T satisfies T * C <= 2^51.
    longest = (MAX_BUCKET_MICROS // (max_requests + burst)) * max_requests // 1_000_000
    if longest < 1:
        # Even a one-second window is too deep with this burst: drop the burst.
        burst = 0
        if "burst_size" in body:
            body["burst_size"] = 0
        longest = (MAX_BUCKET_MICROS // max_requests) * max_requests // 1_000_000
    body["window_secs"] = max(1, min(window, longest))
    assert bucket_micros(max_requests, body["window_secs"], burst) <= MAX_BUCKET_MICROS, body
    return body
