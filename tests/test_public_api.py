"""The package's public surface: what `import bulkgetty` promises stays deliberate."""

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
