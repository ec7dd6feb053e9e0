"""The connection string: checked before libpq sees it, shown only as
`postgresql://user@host:port/db`, and its secrets kept out of every output (SPEC §6).

libpq quotes pieces of the connection string in its errors: a bad percent-encoded token
whole, a host name that holds the tail of a password with an unencoded `@`, an unknown
option's name (with an unquoted space in a key=value password, a piece of the password).
So a string that cannot be right is refused here with a message of our own, never
libpq's; and every other text that reaches an output passes through `scrub`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg.conninfo import conninfo_to_dict

from runner.errors import ConfigError

_SCHEMES = ("postgresql://", "postgres://")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
ENCODE_HINT = ("percent-encode these characters in the user name and password: "
               "% as %25, @ as %40, : as %3A, / as %2F, ? as %3F, # as %23, space as %20")
# Shown in the target (SPEC §6), so neither secret nor worth hiding.
SHOWN = ("user", "host", "hostaddr", "port", "dbname")
# libpq options whose value is a secret wherever it comes from.
SECRET_OPTIONS = ("password", "sslpassword")
_MASK = "***"
_MIN_SCRUBBED = 3  # shorter values would match everywhere (timestamps, ports)
_secrets: set[str] = set()


def source_name(from_file: str | None) -> str:
    return f"DATABASE_URL_FILE ({from_file})" if from_file else "DATABASE_URL"


def parse(conninfo: str, source: str = "DATABASE_URL",
          environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The libpq parameters of `conninfo`, after refusing what cannot be right.

    Raises ConfigError (exit 2) naming `source` for: a `%` that starts no `%XX`, a raw `@`
    anywhere but between user info and host, a host containing `@`, a port that is not a
    number, or anything libpq's own parser (PQconninfoParse) refuses. No message quotes
    the string: libpq's would (fe-connect.c, conninfo_uri_decode and friends)."""
    environ = os.environ if environ is None else environ
    is_url = conninfo.startswith(_SCHEMES)

    def bad(reason: str) -> ConfigError:
        fix = ENCODE_HINT if is_url else (
            "quote a value that holds spaces or quotes: password='a b', with \\' and \\\\ "
            "escaped inside")
        return ConfigError(f"{source} is not a valid connection string: {reason}; {fix}",
                           variable=source.split()[0])

    if is_url:
        rest = conninfo.split("://", 1)[1]
        authority, _, path = rest.partition("/")
        if _BAD_PERCENT.search(conninfo):
            raise bad("a % that does not start a percent-encoded byte (%XX)")
        if authority.count("@") > 1 or "@" in path.partition("?")[0]:
            raise bad("more than one @ (an unencoded @, / or ? in the password?)")
    try:
        params = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        raise bad("libpq cannot parse it (an unknown parameter, an unterminated quote, "
                  "or an unencoded special character)") from None
    hosts = str(params.get("host") or environ.get("PGHOST") or "")
    if "@" in hosts:
        raise bad("the host contains @ (an unencoded @ in the password?)")
    ports = str(params.get("port") or "0").split(",")
    if not all(p.strip().isdigit() for p in ports):
        raise bad("the port is not a number (an unencoded : or / in the password?)")
    register(conninfo, params, environ)
    return params


def target(params: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> str:
    """`postgresql://user@host:port/db` — never the password or other parameters."""
    env = os.environ if environ is None else environ
    user = params.get("user") or env.get("PGUSER") or ""
    host = params.get("host") or params.get("hostaddr") or env.get("PGHOST") or ""
    port = params.get("port") or env.get("PGPORT") or ""
    db = params.get("dbname") or env.get("PGDATABASE") or ""
    return f"postgresql://{user}{'@' if user else ''}{host}{':' if port else ''}{port}/{db}"


def hidden_values(conninfo: str, params: Mapping[str, Any],
                  environ: Mapping[str, str]) -> set[str]:
    """What no output may show, as it would appear there.

    The passwords (as written and decoded, and PGPASSWORD) bare, wherever they appear.
    Every other parameter that is not part of the target in double quotes, the way
    libpq echoes a value it refuses (`invalid sslmode value: "..."`, a certificate
    path): bare, `sslmode=require` would blank every "require" in every message. A value
    equal to the user, host, port or database name stays: the target shows it (SPEC §6)."""
    secrets = {str(v) for k, v in params.items() if k in SECRET_OPTIONS and v}
    if conninfo.startswith(_SCHEMES):
        # libpq's reading (conninfo_uri_parse_options): user info ends at the first @
        # met before any /, and the password follows the first : in it.
        authority = conninfo.split("://", 1)[1].partition("/")[0]
        if "@" in authority:
            raw = authority.partition("@")[0].partition(":")[2]
            secrets |= {raw, unquote(raw)}
    if environ.get("PGPASSWORD"):
        secrets.add(environ["PGPASSWORD"])
    quoted = {f'"{v}"' for k, v in params.items() if k not in SHOWN + SECRET_OPTIONS and v}
    shown = {str(params.get(k) or "") for k in SHOWN}
    return {v for v in secrets if v and v not in shown} | quoted


def register(conninfo: str, params: Mapping[str, Any], environ: Mapping[str, str]) -> None:
    """Remember the values `scrub` hides from then on, in every output of the process."""
    _secrets.update(hidden_values(conninfo, params, environ))


def scrub(text: str) -> str:
    """`text` with every registered value of 3 characters or more replaced by ***,
    longest first so a password is not half-replaced by one of its parts. (Shorter
    passwords would match everywhere: timestamps, ports.)"""
    for value in sorted(_secrets, key=len, reverse=True):
        if len(value) >= _MIN_SCRUBBED and value in text:
            text = text.replace(value, _MASK)
    return text


def scrub_all(value: Any) -> Any:
    """`scrub` through strings, lists and dicts (an event's or a webhook body's fields)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_all(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_all(v) for v in value)
    return value


def scrub_event(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: no event, whoever logs it (psycopg included), shows a
    registered value."""
    if not _secrets:
        return event
    return {k: scrub_all(v) for k, v in event.items()}


def read_password_file(path: str) -> str:
    """The password in DATABASE_PASSWORD_FILE, surrounding whitespace stripped, read anew
    at each connection attempt: a short-lived credential (an RDS IAM token, a rotated
    Secret) that a sidecar or a CSI-mounted Secret rewrites is used as it is now. Unlike
    libpq's PGPASSFILE it takes the bare password (no host:port:db:user: fields) and any
    file mode, as a Kubernetes Secret volume mounts it. Registered for `scrub`.

    Raises ConfigError (exit 2) when the file cannot be read or is empty."""
    try:
        password = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"DATABASE_PASSWORD_FILE {path!r} cannot be read: "
                          f"{exc.__class__.__name__}; mount the Secret there or unset the "
                          "variable", variable="DATABASE_PASSWORD_FILE") from None
    if not password:
        raise ConfigError(f"DATABASE_PASSWORD_FILE {path!r} is empty",
                          variable="DATABASE_PASSWORD_FILE")
    _secrets.add(password)
    return password


def configured(conninfo: str, environ: Mapping[str, str] | None = None) -> bool:
    """False when neither a connection string nor any environment variable libpq reads
    (PQconndefaults' list: PGHOST, PGUSER, PGSERVICE, ...) is set."""
    if conninfo:
        return True
    environ = os.environ if environ is None else environ
    envvars = {opt.envvar.decode() for opt in psycopg.pq.Conninfo.get_defaults() if opt.envvar}
    return any(environ.get(name) for name in envvars)
