"""Secrets in command lines: what is redacted before a command line enters a manifest or a report.

A capture records the target's command line, and reports print it; command lines carry secrets
more often than they should (`--password=...`, `DB_TOKEN=... app`, a database URL with its
password). By default (`--no-redact` keeps them) these values are replaced by `<redacted>`:

- the value of an option whose name looks like a secret, `--db-password=VALUE`, `-token=VALUE`, or
  the argument after it, `--api-key VALUE` (unless that argument is itself an option);
- the value of an environment-style argument whose name looks like a secret,
  `AWS_SECRET_ACCESS_KEY=VALUE` (as `env NAME=VALUE cmd` or `sudo NAME=VALUE cmd` pass them);
- the password of a URL, `postgres://user:VALUE@host/db`, and the values of query parameters
  whose name looks like a secret, `https://host/x?token=VALUE`;
- the credentials of an HTTP authorization header, `Authorization: Bearer VALUE`.

A name looks like a secret when it contains password, passwd, passphrase, secret, token, apikey,
credential, privatekey, cookie or signature, has a part (between - _ .) that is key, pass, pw,
auth or authorization, or ends with pass, auth or key (`--requirepass`); case does not matter. Not recognized: secrets in a bare positional argument
or glued to a short option (`mysql -pVALUE`, `redis-cli -a VALUE`): pass those through the
environment or a file. The same rules apply to free text (`redact_text`, for warnings that quote
a line). Redacting twice changes nothing.
"""
from __future__ import annotations

import re

MARK = "<redacted>"
_STRONG = ("password", "passwd", "passphrase", "secret", "token", "apikey", "credential", "privatekey", "cookie",
           "signature")
_PARTS = frozenset({"key", "pass", "pw", "auth", "authorization"})
_SUFFIXES = ("pass", "auth", "key")          # redis' requirepass and masterauth, dbpass, hostkey
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<secret>[^@\s/]+)(?=@)")
_QUERY = re.compile(r"(?P<head>[?&;](?P<name>[^=&;#\s]+)=)(?P<secret>[^&;#\s]*)")
_AUTH_HEADER = re.compile(r"(?i)(?P<head>\b(?:authorization|proxy-authorization)\s*:\s*(?:[A-Za-z-]+\s+)?)"
                          r"(?P<secret>\S+)")
_BEARER = re.compile(r"(?P<head>\b(?:Bearer|Basic|Token)\s+)(?P<secret>[A-Za-z0-9._~+/=-]{8,})")
_ASSIGN = re.compile(r"(?P<head>(?<![\w.-])-{0,2}(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)\s*[=:]\s*)"
                     r"(?P<secret>[^\s,;&'\"\]\[(){}]+)")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def secret_name(name: str) -> bool:
    """Does an option or variable named `name` (dashes allowed) hold a secret?"""
    n = name.lstrip("-").lower()
    if any(word in n.replace("-", "").replace("_", "").replace(".", "") for word in _STRONG):
        return True
    parts = re.split(r"[-_.]", n)
    return any(part in _PARTS for part in parts) or parts[-1].endswith(_SUFFIXES)


def _sub_secret(m: re.Match) -> str:
    return m.group("head") + (m.group("secret") if m.group("secret") == MARK else MARK)


def _urls(text: str) -> str:
    text = _URL_PASSWORD.sub(_sub_secret, text)
    if "?" in text or "&" in text:
        text = _QUERY.sub(lambda m: _sub_secret(m) if secret_name(m.group("name")) else m.group(0), text)
    return text


def redact_arg(arg: str) -> str:
    """One argument on its own (URLs, NAME=VALUE, --name=VALUE, headers)."""
    head, sep, value = arg.partition("=")
    if sep and value != MARK and (head.startswith("-") or _ENV_NAME.fullmatch(head)) and secret_name(head):
        return head + "=" + MARK
    arg = _urls(arg)
    arg = _AUTH_HEADER.sub(_sub_secret, arg)
    return _BEARER.sub(_sub_secret, arg)


def redact_argv(argv: list[str]) -> list[str]:
    """A command line with the secrets of the rules above replaced by `<redacted>`."""
    out: list[str] = []
    after_secret_option = False
    for arg in argv:
        if after_secret_option and not arg.startswith("-"):
            out.append(MARK)
            after_secret_option = False
            continue
        after_secret_option = arg.startswith("-") and "=" not in arg and len(arg) > 2 and secret_name(arg)
        out.append(redact_arg(arg))
    return out


def redact_text(text: str) -> str:
    """Free text (a warning quoting a line): URLs, headers and NAME=VALUE / NAME: VALUE pairs."""
    text = _urls(text)
    text = _AUTH_HEADER.sub(_sub_secret, text)
    text = _BEARER.sub(_sub_secret, text)
    return _ASSIGN.sub(lambda m: _sub_secret(m) if secret_name(m.group("name")) else m.group(0), text)


def redact_target(target: dict) -> dict:
    """The target with the secrets of its command line, and of its processes', redacted."""
    out = dict(target)
    if isinstance(out.get("cmdline"), list):
        out["cmdline"] = redact_argv([str(a) for a in out["cmdline"]])
    if isinstance(out.get("processes"), list):
        out["processes"] = [redact_target(m) if isinstance(m, dict) else m for m in out["processes"]]
    return out


__all__ = ["MARK", "redact_argv", "redact_arg", "redact_target", "redact_text", "secret_name"]
