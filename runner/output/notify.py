"""The failure webhook: on a non-zero exit, POST a Slack-compatible JSON message.

Bounded by a timeout; whatever happens to the request, the exit code stays the runner's.
The URL itself is never logged: Slack-style webhook URLs carry their secret in the path.
"""

from __future__ import annotations

import json
from typing import Any

from runner.output import log


def failure_body(exit_code: int, message: str, fields: dict[str, Any], host: str,
                 database: str) -> dict[str, Any]:
    where = f" in {fields['file']}" if fields.get("file") else ""
    text = (f"migration-runner failed on {host} (database {database}), exit {exit_code}"
            f"{where}: {message}")
    return {
        "text": text,
        "exit_code": exit_code,
        "version": fields.get("version"),
        "name": fields.get("name"),
        "sqlstate": fields.get("sqlstate"),
        "message": message,
        "host": host,
        "database": database,
    }


def send(url: str, body: dict[str, Any], timeout: float) -> None:
    import urllib.request  # here: a run that succeeds does not pay for it

    logger = log.get()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            logger.info("webhook_sent", status=response.status)
    except OSError as exc:  # refused, timed out, HTTP error
        logger.warning("webhook_failed", error=f"{exc.__class__.__name__}: {exc}")
    except ValueError:  # its message would quote the URL
        logger.warning("webhook_failed", error="MIGRATE_WEBHOOK_URL is not an http(s) URL")
