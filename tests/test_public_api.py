"""The package's public surface: what `import bulkgetty` promises stays deliberate."""

import subprocess
import sys

import bulkgetty


def test_all_is_sorted_and_complete() -> None:
    exported = list(bulkgetty.__all__)
    assert exported == sorted(exported, key=lambda n: (not n.isupper(), n))
    for name in exported:
        assert hasattr(bulkgetty, name), name


def test_every_error_descends_from_bulkgetty_error() -> None:
    errors = [getattr(bulkgetty, n) for n in bulkgetty.__all__ if n.endswith("Error")]
    assert all(issubclass(e, bulkgetty.BulkGettyError) for e in errors)
    assert len(errors) >= 15


def test_the_cli_and_the_package_start_without_importing_rich() -> None:
    """rich draws the live display only; importing it cost every run's start ~30-80 ms of
    CPU (issue 16), so it waits for a display, and `bulkgetty.RunDisplay` still resolves."""
    code = (
        "import sys, bulkgetty, bulkgetty.cli.main\n"
        "assert not any(m == 'rich' or m.startswith('rich.') for m in sys.modules), 'rich'\n"
        "assert bulkgetty.RunDisplay.__module__ == 'bulkgetty.cli.progress'\n"
        "assert 'rich' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
