"""Settings for the unit suite.

Hypothesis fails an example that runs longer than its deadline (200 ms by default): a timing
assertion, which unit tests must not make. On the shared 2-core machine, with qemu VMs
running, an example of test_manifest_rules that takes ~1 ms took 843 ms once and failed the
suite (FlakyFailure "Unreliable test timings"). The deadline is off; example counts stay.
"""
from hypothesis import settings

settings.register_profile("unit", deadline=None)
settings.load_profile("unit")
