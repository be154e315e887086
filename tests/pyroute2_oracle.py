"""Link kinds pyroute2 0.9 decodes incompletely.

pyroute2's ``ipvlan`` IFLA_INFO_DATA knows IFLA_IPVLAN_MODE only; the kernel
also has IFLA_IPVLAN_FLAGS (bridge=0, private=1, vepa=2). Without it the flag
is neither sent nor read back, and the kernel silently uses ``bridge``.
We register an extended kind once per process; afterwards
``IPRoute.link('add', kind='ipvlan', ipvlan_mode=0, ipvlan_flags=1, ...)``
and our own message encoder both carry the flag, and dumps decode it.
"""
from __future__ import annotations

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from ..model import IPVLAN_FLAG, IPVLAN_MODE  # noqa: F401  (the harness reads them here)


class ipvlan_data(nla):
    """IFLA_INFO_DATA for kind ``ipvlan`` (include/uapi/linux/if_link.h)."""

    prefix = "IFLA_"
    nla_map = (
        ("IFLA_IPVLAN_UNSPEC", "none"),
        ("IFLA_IPVLAN_MODE", "uint16"),
        ("IFLA_IPVLAN_FLAGS", "uint16"),
    )


_registered = False


def register() -> None:
    """Register the extended ipvlan kind with pyroute2 (idempotent)."""
    global _registered
    if _registered:
        return
    ifinfmsg.ifinfo.register_link_kind(module={"ipvlan": ipvlan_data})
    _registered = True


register()
