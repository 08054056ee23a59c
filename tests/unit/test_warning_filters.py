"""Third-party deprecation warnings are silenced where our call causes them, not for the process:
a user's (or a library's) own FutureWarning still shows after megatron_spark has run."""

import warnings

from megatron_spark import platform


def _shown(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def _deprecation():
    warnings.warn("`load_state_dict` is deprecated and will be removed", FutureWarning, stacklevel=1)


def test_silenced_covers_its_block_or_function_only():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with platform.silenced("`load_state_dict` is deprecated"):
            _deprecation()
            warnings.warn("something else", FutureWarning, stacklevel=1)
        _deprecation()  # outside the block: shown
    assert [str(w.message) for w in caught] == [
        "something else",
        "`load_state_dict` is deprecated and will be removed",
    ]

    quiet = platform.silenced("`load_state_dict` is deprecated")(_deprecation)
    assert _shown(quiet) == []
    assert _shown(quiet) == []  # the decorator re-enters on every call
    assert _shown(_deprecation) != []


def test_no_process_wide_filter_for_deprecations():
    with warnings.catch_warnings():
        warnings.resetwarnings()  # no filter: what remains below was added by megatron_spark
        platform.quiet_megatron_import_warnings()
        added = list(warnings.filters)
        assert len(added) == 2
        # Only the import-time notices about apex / Transformer Engine, matched by message.
        assert all(f[1] is not None and "not installed" in f[1].pattern for f in added), added
        assert all(f[2] is Warning for f in added)
