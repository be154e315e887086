"""Test support: pyroute2 as the oracle of our netlink codec (reconciler.kernel.netlink).

pyroute2 is a test dependency only (no runtime module imports it). Here: what pyroute2
reads in a message (``pyroute2_reads``), messages as pyroute2 writes them
(``pyroute2_link``, ``pyroute2_addr``, ``pyroute2_route``), and the ipvlan link kind as
pyroute2 0.9 should know it.

pyroute2's ``ipvlan`` IFLA_INFO_DATA knows IFLA_IPVLAN_MODE only; the kernel
also has IFLA_IPVLAN_FLAGS (bridge=0, private=1, vepa=2). Without it the flag
is neither sent nor read back, and the kernel silently uses ``bridge``.
We register an extended kind once per process; afterwards
``IPRoute.link('add', kind='ipvlan', ipvlan_mode=0, ipvlan_flags=1, ...)``
carries the flag, and pyroute2 decodes it from dumps and from our requests.
"""
from __future__ import annotations

import ipaddress
import socket

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from reconciler.kernel import netlink as nl
from reconciler.model import IPVLAN_FLAG, IPVLAN_MODE  # noqa: F401  (the harness reads them here)
from reconciler.objects import RTPROT


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


# ---- pyroute2 reading our messages ------------------------------------------------------------
def _tree(value):
    """A pyroute2 nla (or message) as plain data: {name: value}, nested ones likewise."""
    if hasattr(value, "get") and value.get("attrs") is not None:
        return {name: _tree(v) for name, v in value["attrs"]}
    return value


FIELDS = {
    ifinfmsg: ("family", "index", "flags", "change"),
    ifaddrmsg: ("family", "prefixlen", "flags", "scope", "index"),
    rtmsg: ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"),
}
CLASS = {
    nl.RTM_NEWLINK: ifinfmsg, nl.RTM_DELLINK: ifinfmsg, nl.RTM_GETLINK: ifinfmsg,
    nl.RTM_NEWADDR: ifaddrmsg, nl.RTM_DELADDR: ifaddrmsg, nl.RTM_GETADDR: ifaddrmsg,
    nl.RTM_NEWROUTE: rtmsg, nl.RTM_DELROUTE: rtmsg, nl.RTM_GETROUTE: rtmsg,
}


def pyroute2_reads(data: bytes) -> dict:
    """What pyroute2 makes of one whole netlink message: header type and flags, the fixed
    struct's fields, and every attribute (none of them may be left unparsed)."""
    typ = int.from_bytes(data[4:6], "little")
    cls = CLASS[typ]
    msg = cls(bytes(data))
    msg.decode()
    assert msg["header"]["length"] == len(data)
    out = {"nltype": typ, "nlflags": msg["header"]["flags"]}
    out.update({f: msg[f] for f in FIELDS[cls]})
    out["attrs"] = _tree(msg)
    assert not any(str(k).startswith("UNKNOWN") for k in out["attrs"]), out["attrs"]
    return out


# ---- pyroute2 writing the kernel's messages (notifications, dump records) ---------------------
def pyroute2_message(cls, msg_type, fields, attrs) -> bytes:
    msg = cls()
    msg["header"]["type"] = msg_type
    for k, v in fields.items():
        msg[k] = v
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def pyroute2_link(msg_type, index, name, flags=1, family=0, **extra) -> bytes:
    """An RTM_NEWLINK/DELLINK notification as pyroute2 encodes it; extra: alias, link,
    kind + data (a list of IFLA_INFO_DATA attributes), address."""
    attrs = [("IFLA_IFNAME", name)]
    if "alias" in extra:
        attrs.append(("IFLA_IFALIAS", extra["alias"]))
    if "link" in extra:
        attrs.append(("IFLA_LINK", extra["link"]))
    if "address" in extra:
        attrs.append(("IFLA_ADDRESS", extra["address"]))
    if "kind" in extra:
        info = [("IFLA_INFO_KIND", extra["kind"])]
        if extra.get("data"):
            info.append(("IFLA_INFO_DATA", {"attrs": extra["data"]}))
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
    return pyroute2_message(ifinfmsg, msg_type, {"family": family, "index": index, "flags": flags}, attrs)


def pyroute2_addr(msg_type, index, cidr, scope=0, flags=0) -> bytes:
    iface = ipaddress.ip_interface(cidr)
    fam = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
    attrs = [("IFA_ADDRESS", str(iface.ip))] + ([("IFA_LOCAL", str(iface.ip))] if fam == socket.AF_INET else [])
    attrs.append(("IFA_FLAGS", flags))
    return pyroute2_message(ifaddrmsg, msg_type, {"family": fam, "prefixlen": iface.network.prefixlen,
                                                  "scope": scope, "index": index, "flags": flags & 0xFF}, attrs)


def pyroute2_route(msg_type, dst, table=nl.RT_TABLE_MAIN, proto=RTPROT, scope=0, gateway=None, oif=None) -> bytes:
    net = ipaddress.ip_network(dst)
    fam = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    attrs = [("RTA_TABLE", table)]
    if net.prefixlen:
        attrs.append(("RTA_DST", str(net.network_address)))
    if gateway:
        attrs.append(("RTA_GATEWAY", gateway))
    if oif is not None:
        attrs.append(("RTA_OIF", oif))
    return pyroute2_message(rtmsg, msg_type, {"family": fam, "dst_len": net.prefixlen, "table": table if table < 256 else 252,  # RT_TABLE_COMPAT
                                              "proto": proto, "scope": scope, "type": nl.RTN_UNICAST}, attrs)
