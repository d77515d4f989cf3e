"""What the dashboard lets through. It is safe by default:

- bound to 127.0.0.1, it answers only requests whose ``Host`` header names this machine (a web page elsewhere
  cannot reach it through a DNS name that points at 127.0.0.1);
- bound to any other address it requires a token, printed at start: ``?token=...`` once (then a cookie), or an
  ``Authorization: Bearer ...`` header;
- actions (launch, stop, resume, validate, plan) are POSTs with a JSON body and, when the browser sends an
  ``Origin``, from this server's own pages: another site's form cannot start a run;
- every path a request names resolves (symbolic links followed) inside the runs folder or a recipe folder.

Nothing here runs a command; :mod:`tuneforge.apps.ui.processes` starts only ``tuneforge train``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
TOKEN_COOKIE = "tuneforge_ui_token"


class Refused(Exception):
    """A request the dashboard does not serve: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_local(host: str) -> bool:
    return host.strip("[]") in LOCAL_HOSTS


def host_name(header: str) -> str:
    """The host part of a ``Host`` header (``127.0.0.1:7860`` → ``127.0.0.1``, ``[::1]:80`` → ``::1``)."""
    return urlsplit(f"//{header}").hostname or ""


@dataclass
class Guard:
    """The checks every request goes through; ``token`` is None when the server is bound to this machine."""

    host: str
    token: str | None = field(default=None)

    @classmethod
    def for_host(cls, host: str) -> Guard:
        """Local host: no token. Any other: a fresh random token that the person starting the server sees."""
        return cls(host=host, token=None if is_local(host) else secrets.token_urlsafe(24))

    def check(self, method: str, headers: dict[str, str], query_token: str | None, cookie_token: str | None) -> bool:
        """Raise :class:`Refused` for a request that may not pass; True when its token came in the query (the
        caller then sets the cookie so that the page's own requests carry it)."""
        host_header = headers.get("host", "")
        if self.token is None and not is_local(host_name(host_header)):
            raise Refused(403, f"this dashboard answers only requests to {self.host} (Host header was "
                               f"{host_header or 'missing'})")
        from_query = False
        if self.token is not None:
            offered = [query_token, cookie_token]
            authorization = headers.get("authorization", "")
            if authorization.lower().startswith("bearer "):
                offered.append(authorization[7:].strip())
            matches = [t for t in offered if t and secrets.compare_digest(t, self.token)]
            if not matches:
                raise Refused(401, "this dashboard listens beyond this machine and needs its token: open the URL "
                                   "with ?token=... that `tuneforge ui` printed at start")
            from_query = bool(query_token) and secrets.compare_digest(query_token, self.token)
        if method not in ("GET", "HEAD"):
            if not headers.get("content-type", "").startswith("application/json"):
                raise Refused(415, "actions take a JSON body (Content-Type: application/json)")
            origin = headers.get("origin")
            if origin and urlsplit(origin).netloc != host_header:
                raise Refused(403, f"actions are accepted only from this dashboard's own pages (Origin {origin})")
        return from_query


def confined(path: str, roots: list[Path] | tuple[Path, ...], base: Path | None = None) -> Path:
    """``path`` resolved against ``base`` (default: the first root; an absolute path stays as it is), symbolic
    links followed; it must lie inside one of ``roots`` — ``../`` out of them, or a link out of them, is refused
    with 403."""
    if not roots:
        raise Refused(403, f"{path}: no folder is open to this dashboard for it")
    if "\x00" in path:
        raise Refused(400, "a path may not contain NUL")
    candidate = ((base or roots[0]) / Path(path).expanduser()).resolve()
    for root in roots:
        top = root.resolve()
        if candidate == top or top in candidate.parents:
            return candidate
    raise Refused(403, f"{path}: outside the folders this dashboard serves ({', '.join(str(r) for r in roots)})")
