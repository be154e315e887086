"""The one cyclic-GC switch: off inside, nests, back on after (also after an exception), and
left off when it was off before (the CLI's block around the loader's)."""
from __future__ import annotations

import gc

import pytest

from reconciler.gcpause import no_cyclic_gc


def test_off_inside_nested_and_restored():
    assert gc.isenabled()
    with no_cyclic_gc():
        assert not gc.isenabled()
        with no_cyclic_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block does not turn it back on
    assert gc.isenabled()
    with pytest.raises(ValueError):
        with no_cyclic_gc():
            raise ValueError
    assert gc.isenabled()
