"""Security: no plain-HTTP API off loopback, no secret on a command line or in any output."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bulkgetty.sandbox import Faults, SandboxConfig, SandboxThread
from tests.faults.conftest import Matrix, audit
from tests.harness import clean_env, cli, grant_env, sandbox, start_cli, write_ids


@pytest.mark.parametrize("url", ["http://api.gettyimages.com", "http://10.1.2.3:8080"])
def test_plain_http_api_url_off_loopback_is_refused_before_any_request(
    tmp_path: Path, matrix: Matrix, url: str
) -> None:
    with SandboxThread() as sb:
        env = clean_env({**sb.credentials_env(), "GETTY_API_URL": url})
        manifest = write_ids(tmp_path / "ids.txt", ["9900101"])
        refused = cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env, timeout=30)
        assert refused.returncode == 2, refused.stderr
        assert "https" in refused.stderr and "Traceback" not in refused.stderr
        result = audit(
            sb,
            tmp_path / "o",
            [],
            [refused],
            fault=f"plain http API URL {url}",
            spends_expected=0,
        )
        matrix.check(result, note=refused.stderr.strip().splitlines()[0][:70])


def test_no_option_takes_a_secret_and_no_secret_is_on_the_running_command_line(
    tmp_path: Path, matrix: Matrix
) -> None:
    """Secrets come from the environment only: `run --help` offers no flag for one, and the
    command line of a running bulkgetty (what `ps` shows every user) carries none."""
    helped = cli("run", "--help", env=clean_env())
    options = {w.strip(",[]") for w in helped.stdout.split() if w.startswith("--")}
    assert not {o for o in options if any(k in o for k in ("secret", "password", "token", "key"))}
    ids = [str(9_900_200 + i) for i in range(6)]
    with SandboxThread(SandboxConfig(delivery_latency=0.3)) as sb:
        env = clean_env(sb.credentials_env())
        manifest = write_ids(tmp_path / "ids.txt", ids)
        proc = start_cli("run", str(manifest), "--out", str(tmp_path / "o"), env=env)
        cmdlines = []
        while proc.poll() is None:
            try:
                cmdlines.append(Path(f"/proc/{proc.pid}/cmdline").read_bytes())
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.1)
        done = proc.communicate(timeout=60)
        assert proc.returncode == 0, done[1]
        secrets = [sb.config.api_secret, sb.config.password, *sb.issued_tokens()]
        assert cmdlines and not [s for s in secrets for c in cmdlines if s.encode() in c]
        result = audit(sb, tmp_path / "o", ids, [done], fault="secrets on a command line")
        matrix.check(result, note=f"{len(cmdlines)} samples of /proc/PID/cmdline")


@pytest.mark.parametrize(
    "grant", ["password", "client_credentials", "refresh_token", "access_token"]
)
def test_no_secret_in_events_logs_report_or_journal_even_with_debug_and_errors(
    tmp_path: Path, matrix: Matrix, grant: str, scheme: str
) -> None:
    """Every grant, --json events and --debug, with API and delivery errors on the way: no
    secret, token or URI signature in stdout, stderr, the report or the state folder."""
    ids = [str(9_900_300 + i) for i in range(6)]
    faults = Faults(
        post_status={ids[0]: (500, 1, False)},
        status={ids[1]: (503, 1)},
        expired=frozenset({ids[2]}),
        html_error={ids[3]: 1},
    )
    with sandbox(SandboxConfig(faults=faults), scheme=scheme) as sb:
        env = clean_env(grant_env(sb, grant))
        manifest = write_ids(tmp_path / "ids.txt", ids)
        out = tmp_path / "o"
        done = cli("--debug", "run", str(manifest), "--out", str(out), "--json", env=env)
        assert done.returncode == 1, done.stderr
        outputs = done.stdout + done.stderr + (out / ".bulkgetty" / "report.jsonl").read_text()
        assert "sig=" not in outputs, "a signed delivery URI was printed"
        result = audit(
            sb,
            out,
            ids,
            [done],
            fault=f"secret scan, {grant} grant, --debug --json",
            on_disk=[i for i in ids if i != ids[2]],
            root=tmp_path,
        )
        matrix.check(result, note="expired URI fails as designed")
