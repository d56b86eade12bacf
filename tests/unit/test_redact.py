"""Command-line secrets are redacted before they reach a manifest or a report (diag.redact)."""
from __future__ import annotations

import pytest

from diag.redact import MARK, redact_argv, redact_text

R = MARK


@pytest.mark.parametrize("argv, expected", [
    (["app", "--password=hunter2", "--port", "80"], ["app", f"--password={R}", "--port", "80"]),
    (["app", "--api-key", "abc123", "--verbose"], ["app", "--api-key", R, "--verbose"]),
    (["app", "-token=abc", "--db-pass", "x"], ["app", f"-token={R}", "--db-pass", R]),
    (["redis-server", "--requirepass", "foobared", "--masterauth", "x"],
     ["redis-server", "--requirepass", R, "--masterauth", R]),
    (["env", "DB_PASSWORD=s3", "AWS_SECRET_ACCESS_KEY=k", "PATH=/usr/bin", "PWD=/srv", "python3", "a.py"],
     ["env", f"DB_PASSWORD={R}", f"AWS_SECRET_ACCESS_KEY={R}", "PATH=/usr/bin", "PWD=/srv", "python3", "a.py"]),
    (["psql", "postgres://alice:pa55@db:5432/app?sslmode=require&token=zz"],
     ["psql", f"postgres://alice:{R}@db:5432/app?sslmode=require&token={R}"]),
    (["curl", "-H", "Authorization: Bearer eyJhbGciOi.abc", "https://x/y?apikey=1&q=2"],
     ["curl", "-H", f"Authorization: Bearer {R}", f"https://x/y?apikey={R}&q=2"]),
    (["java", "-Djavax.net.ssl.keyStorePassword=changeit", "-jar", "a.jar"],
     ["java", f"-Djavax.net.ssl.keyStorePassword={R}", "-jar", "a.jar"]),
    # what is left alone: ordinary options and values, a boolean secret-named flag before another option
    (["gunicorn", "--workers=4", "--bind", "0.0.0.0:80", "--no-auth", "--author=ann", "app:app"],
     ["gunicorn", "--workers=4", "--bind", "0.0.0.0:80", "--no-auth", "--author=ann", "app:app"]),
    (["python3", "-m", "http.server", "8000"], ["python3", "-m", "http.server", "8000"]),
])
def test_redact_argv(argv, expected):
    assert redact_argv(argv) == expected
    assert redact_argv(expected) == expected          # twice changes nothing


def test_not_recognized_short_options_are_documented_as_such():
    # a secret glued to a short option cannot be told from a value: it stays (README says so)
    assert redact_argv(["mysql", "-phunter2"]) == ["mysql", "-phunter2"]


def test_redact_text_in_a_quoted_line():
    line = 'x.log:3: not a strace line: \'execve("/app", ["app", "--token=abc"]) password: hunter2 u=http://a:b@h/\''
    out = redact_text(line)
    assert "abc" not in out and "hunter2" not in out and "a:b@" not in out
    assert out.count(MARK) == 3 and out.startswith("x.log:3: not a strace line:")
