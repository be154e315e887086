"""The netlink codec, and the socket that speaks it.

One module for everything rtnetlink the reconciler puts on the wire or reads
off it: the uapi constants and struct layouts, decoding dumps and
notifications into records (``LinkRec``, ``AddrRec``, ``RouteRec``, reading
only the attributes the reconciler needs), encoding requests
(``link_request``-style builders from ``ifinfo``/``ifaddr``/``rtm`` and
attributes), dump requests (``dump_request``) and ``is_link_local``. Observe,
apply (``handlers``) and the daemon's monitor all use it; nothing else packs
or parses netlink.

Hand-written with ``struct``, not pyroute2's message classes: pyroute2 costs
~30 us to encode one message and ~1.9 ms to decode one small namespace's dump
(docs/ARCHITECTURE.md, Libraries, has the numbers), more than the kernel's own
work at a thousand namespaces. pyroute2 is this codec's *oracle* instead: the
tests decode the same real dumps with both and parse every request kind we
encode back with pyroute2 (tests/unit/test_codec_oracle.py,
tests/kernel/test_codec_oracle.py). It is a test dependency, not a runtime one.

Entering namespaces (the worker thread, setns) is ``reconciler.kernel.nsworker``.
"""
from __future__ import annotations

import errno as errno_mod
import ipaddress
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import Bug, KernelError

# --- constants (include/uapi/linux/netlink.h, rtnetlink.h, if_link.h, if_addr.h) ----------
NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 1, 2, 4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_ACK_TLVS = 0x200
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
NLMSGERR_ATTR_MSG = 1

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_LINKINFO, IFLA_IFALIAS, IFLA_AF_SPEC = 18, 20, 26
IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_LINK_NETNSID = 28, 29, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VLAN_ID = 1
IFLA_IPVLAN_MODE, IFLA_IPVLAN_FLAGS = 1, 2
IFLA_MACVLAN_MODE = 1  # u32: private=1, vepa=2, bridge=4, passthru=8
IFLA_INET6_CONF = 2
DEVCONF_DISABLE_IPV6 = 26
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFF_UP = 1

IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_NODAD, IFA_F_PERMANENT = 0x02, 0x80

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_TABLE = 1, 4, 5, 6, 15
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253
RTPROT_BIRD = 12  # rtm_protocol of the routes BIRD installs

# rtnetlink multicast groups (RTNLGRP_*) as bind() bitmask bits (1 << (group - 1))
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400

NLMSGHDR = _HDR = struct.Struct("=IHHII")  # struct nlmsghdr: len, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")
_IFA = struct.Struct("=BBBBI")
_RTM = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")


def align(n: int) -> int:
    """NLMSG_ALIGN / RTA_ALIGN: messages and attributes start on 4-byte boundaries."""
    return (n + 3) & ~3


_align = align


def parse_attrs(data: bytes, start: int, end: int) -> Dict[int, bytes]:
    """TLV attributes in ``data[start:end]`` as {type: payload} (last one wins)."""
    out: Dict[int, bytes] = {}
    pos = start
    unpack = _RTA.unpack_from
    while pos + 4 <= end:
        length, typ = unpack(data, pos)
        if length < 4:
            break
        out[typ & 0x3FFF] = data[pos + 4 : pos + length]
        pos += (length + 3) & ~3  # align(), inlined: this loop is observe's hottest
    return out


def _u32(b: Optional[bytes]) -> Optional[int]:
    return struct.unpack_from("=I", b)[0] if b and len(b) >= 4 else None


def _s32(b: Optional[bytes]) -> Optional[int]:
    return struct.unpack_from("=i", b)[0] if b and len(b) >= 4 else None


def _str(b: Optional[bytes]) -> Optional[str]:
    if b is None:
        return None
    return b.split(b"\0", 1)[0].decode("utf-8", "replace")


# --- decoded dump records --------------------------------------------------------------------
@dataclass
class LinkRec:
    index: int
    name: str
    flags: int
    kind: str = ""
    alias: str = ""
    link: int = 0  # IFLA_LINK: lower device index (in link_netnsid's namespace if set)
    link_netnsid: Optional[int] = None
    vid: Optional[int] = None
    ipvlan_mode: Optional[int] = None
    ipvlan_flags: Optional[int] = None
    disable_ipv6: Optional[int] = None
    macvlan_mode: Optional[int] = None
    mac: str = ""  # IFLA_ADDRESS as lower-case hex with colons

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)


@dataclass
class AddrRec:
    index: int
    family: int
    prefixlen: int
    packed: bytes  # IFA_LOCAL (else IFA_ADDRESS) as the kernel sent it: 4 or 16 bytes
    flags: int
    scope: int

    @property
    def address(self) -> str:
        """The address as text (for messages; observe builds ``interface`` from the bytes)."""
        return socket.inet_ntop(self.family, self.packed) if self.packed else ""

    @property
    def interface(self) -> Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]:
        """address/prefixlen, made from the integer: ipaddress's own text parser costs ~10x."""
        cls = ipaddress.IPv4Interface if self.family == socket.AF_INET else ipaddress.IPv6Interface
        return cls((int.from_bytes(self.packed, "big"), self.prefixlen))


@dataclass
class RouteRec:
    family: int
    dst: Optional[str]
    dst_len: int
    gateway: Optional[str]
    oif: Optional[int]
    table: int
    protocol: int
    scope: int
    type: int


def decode_link(data: bytes, pos: int, end: int) -> LinkRec:
    _fam, _type, index, flags, _change = _IFI.unpack_from(data, pos)
    a = parse_attrs(data, pos + _IFI.size, end)
    rec = LinkRec(index=index, name=_str(a.get(IFLA_IFNAME)) or "", flags=flags)
    rec.alias = _str(a.get(IFLA_IFALIAS)) or ""
    rec.link = _u32(a.get(IFLA_LINK)) or 0
    rec.link_netnsid = _s32(a.get(IFLA_LINK_NETNSID))
    mac = a.get(IFLA_ADDRESS)
    if mac:
        rec.mac = mac.hex(":")
    li = a.get(IFLA_LINKINFO)
    if li is not None:
        info = parse_attrs(li, 0, len(li))
        rec.kind = _str(info.get(IFLA_INFO_KIND)) or ""
        d = info.get(IFLA_INFO_DATA)
        if d is not None:
            da = parse_attrs(d, 0, len(d))
            if rec.kind == "vlan" and IFLA_VLAN_ID in da:
                rec.vid = struct.unpack_from("=H", da[IFLA_VLAN_ID])[0]
            elif rec.kind == "ipvlan":
                if IFLA_IPVLAN_MODE in da:
                    rec.ipvlan_mode = struct.unpack_from("=H", da[IFLA_IPVLAN_MODE])[0]
                rec.ipvlan_flags = (
                    struct.unpack_from("=H", da[IFLA_IPVLAN_FLAGS])[0] if IFLA_IPVLAN_FLAGS in da else 0
                )
            elif rec.kind == "macvlan":
                rec.macvlan_mode = _u32(da.get(IFLA_MACVLAN_MODE))
    af = a.get(IFLA_AF_SPEC)
    if af is not None:
        fams = parse_attrs(af, 0, len(af))
        inet6 = fams.get(socket.AF_INET6)
        if inet6 is not None:
            conf = parse_attrs(inet6, 0, len(inet6)).get(IFLA_INET6_CONF)
            if conf is not None and len(conf) >= 4 * (DEVCONF_DISABLE_IPV6 + 1):
                rec.disable_ipv6 = struct.unpack_from("=i", conf, 4 * DEVCONF_DISABLE_IPV6)[0]
    return rec


def decode_addr(data: bytes, pos: int, end: int) -> AddrRec:
    family, prefixlen, flags, scope, index = _IFA.unpack_from(data, pos)
    a = parse_attrs(data, pos + _IFA.size, end)
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS) or b""
    fl = _u32(a.get(IFA_FLAGS))
    return AddrRec(
        index=index,
        family=family,
        prefixlen=prefixlen,
        packed=raw,
        flags=fl if fl is not None else flags,
        scope=scope,
    )


def decode_route(data: bytes, pos: int, end: int) -> RouteRec:
    family, dst_len, _src_len, _tos, table, proto, scope, rtype, _flags = _RTM.unpack_from(data, pos)
    a = parse_attrs(data, pos + _RTM.size, end)
    t = _u32(a.get(RTA_TABLE))
    dst = a.get(RTA_DST)
    gw = a.get(RTA_GATEWAY)
    return RouteRec(
        family=family,
        dst=socket.inet_ntop(family, dst) if dst else None,
        dst_len=dst_len,
        gateway=socket.inet_ntop(family, gw) if gw else None,
        oif=_u32(a.get(RTA_OIF)),
        table=t if t is not None else table,
        protocol=proto,
        scope=scope,
        type=rtype,
    )


Address = Union[bytes, str]  # packed (ipaddress's .packed), or text


def _packed(family: int, address: Address) -> bytes:
    return address if isinstance(address, bytes) else socket.inet_pton(family, address)


def is_link_local(family: int, address: Optional[Address]) -> bool:
    """An IPv6 link-local address (fe80::/10): the kernel's own, one per link, which observe
    skips and the monitor ignores. IPv4 169.254/16 addresses are not: observe reads those."""
    if family != socket.AF_INET6 or not address:
        return False
    raw = _packed(family, address)
    return raw[0] == 0xFE and raw[1] & 0xC0 == 0x80


# --- encoding ------------------------------------------------------------------------------
# Layouts are the uapi structs above; every request kind is parsed back by pyroute2 in
# tests/unit/test_codec_oracle.py.
def _attr(typ: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _RTA.pack(length, typ) + payload + b"\0" * (_align(length) - length)


def attr_u32(typ: int, value: int) -> bytes:
    return _attr(typ, struct.pack("=I", value))


def attr_u16(typ: int, value: int) -> bytes:
    return _attr(typ, struct.pack("=H", value))


def attr_str(typ: int, value: str) -> bytes:
    return _attr(typ, value.encode() + b"\0")


def attr_mac(typ: int, mac: str) -> bytes:
    return _attr(typ, bytes.fromhex(mac.replace(":", "")))


def attr_ip(typ: int, family: int, address: Address) -> bytes:
    return _attr(typ, _packed(family, address))


def nested(typ: int, *attrs: bytes) -> bytes:
    return _attr(typ, b"".join(attrs))


def request(msg_type: int, flags: int, body: bytes) -> bytearray:
    """A request the kernel ACKs (its sequence number is set when it is sent)."""
    buf = bytearray(_HDR.pack(_HDR.size + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, 0, 0))
    buf += body
    return buf


def ifinfo(index: int = 0, flags: int = 0, change: int = 0, family: int = 0) -> bytes:
    return _IFI.pack(family, 0, index, flags, change)


def ifaddr(family: int, prefixlen: int, index: int, flags: int = 0, scope: int = 0) -> bytes:
    return _IFA.pack(family, prefixlen, flags & 0xFF, scope, index)


def rtm(family: int, dst_len: int, table: int, protocol: int, scope: int, rtype: int = RTN_UNICAST) -> bytes:
    return _RTM.pack(family, dst_len, 0, 0, table, protocol, scope, rtype, 0)


def addr_request(msg_type: int, flags: int, index: int, family: int, address: Address, prefixlen: int) -> bytearray:
    """RTM_NEWADDR/RTM_DELADDR of one address (IFA_LOCAL = IFA_ADDRESS: no peer); IPv6 ones
    with IFA_F_NODAD (the reconciler's addresses are unique by construction)."""
    raw = _packed(family, address)
    fl = IFA_F_NODAD if family == socket.AF_INET6 else 0
    body = ifaddr(family, prefixlen, index, flags=fl) + _attr(IFA_LOCAL, raw) + _attr(IFA_ADDRESS, raw)
    if fl:
        body += attr_u32(IFA_FLAGS, fl)
    return request(msg_type, flags, body)


def route_request(
    msg_type: int,
    flags: int,
    family: int,
    dst: Optional[Address],
    dst_len: int,
    protocol: int,
    scope: int,
    table: int = RT_TABLE_MAIN,
    gateway: Optional[Address] = None,
    oif: Optional[int] = None,
) -> bytearray:
    """RTM_NEWROUTE/RTM_DELROUTE of one unicast route. A table above 255 goes in RTA_TABLE
    (rtm_table is a byte: RT_TABLE_UNSPEC there); other tables than main go in both."""
    body = rtm(family, dst_len, table if table < 256 else 0, protocol, scope)
    if dst is not None and dst_len:
        body += attr_ip(RTA_DST, family, dst)
    if table != RT_TABLE_MAIN:
        body += attr_u32(RTA_TABLE, table)
    if gateway is not None:
        body += attr_ip(RTA_GATEWAY, family, gateway)
    if oif is not None:
        body += attr_u32(RTA_OIF, oif)
    return request(msg_type, flags, body)


def dump_request(msg_type: int, seq: int, table: int = 0, protocol: int = 0) -> bytes:
    """An RTM_GETLINK, RTM_GETADDR or RTM_GETROUTE dump of every family. Links without
    statistics (IFLA_EXT_MASK); routes of ``table``/``protocol`` when not 0 -- applied by the
    kernel only on a socket with NETLINK_GET_STRICT_CHK (and a table below 256), so a
    reader filters the records too."""
    if msg_type == RTM_GETLINK:
        body = ifinfo() + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    elif msg_type == RTM_GETADDR:
        body = ifaddr(0, 0, 0)
    elif msg_type == RTM_GETROUTE:
        body = _RTM.pack(0, 0, 0, 0, table if table < 256 else 0, protocol, 0, 0, 0)
    else:
        raise Bug(f"netlink: no dump request for message type {msg_type}")
    return _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


# --- sockets -------------------------------------------------------------------------------------
RECV_SIZE = 1 << 20  # the largest datagram read at once (a dump's are at most 32 KiB)
_recv_buffers = threading.local()


def _recv(sock: socket.socket) -> bytes:
    """One datagram, read into this thread's reusable buffer and copied out at its size:
    ``sock.recv(RECV_SIZE)`` allocates (and gives back) RECV_SIZE bytes per call, which
    cost ~40 % of a namespace's dump CPU (profiled: two dumps, 0.18 -> 0.10 ms)."""
    buf = getattr(_recv_buffers, "buf", None)
    if buf is None:
        buf = _recv_buffers.buf = bytearray(RECV_SIZE)
    n = sock.recv_into(buf)
    with memoryview(buf) as view:
        return bytes(view[:n])


@dataclass
class Request:
    """One netlink request and how to name it in an error message."""

    data: bytearray
    operation: str
    obj: str
    ok_errnos: Tuple[int, ...] = ()  # e.g. ENODEV when deleting something already gone
    action: object = None  # the plan action this request belongs to
    error: Optional[KernelError] = None  # set when the kernel refused it


class NetlinkSocket:
    """A NETLINK_ROUTE socket with pipelined requests and ACK collection."""

    RCVBUF = 8 << 20
    CHUNK = 256  # requests per send() before draining ACKs

    def __init__(self, label: str, counter: "WriteCounter"):
        self.label = label
        self.counter = counter
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, self.RCVBUF)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.RCVBUF)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 32, 1 << 20)  # SO_SNDBUFFORCE
        except OSError:
            pass
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                self.sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        # strict checking lets a dump request filter in the kernel (Linux >= 4.20); without
        # it every filter is applied here instead, with the same result
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            self.strict = True
        except OSError:
            self.strict = False
        self.sock.bind((0, 0))
        self.seq = 0
        self.queue: List[Request] = []

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF or 1
        return self.seq

    # dumps ------------------------------------------------------------------------------------
    def dump(self, msg_type: int, decode: Callable, want_type: int, table: int = 0, protocol: int = 0) -> list:
        seq = self.next_seq()
        self.sock.send(dump_request(msg_type, seq, table, protocol))
        out = []
        while True:
            data = _recv(self.sock)
            pos = 0
            n = len(data)
            while pos + 16 <= n:
                length, typ, _flags, mseq, _pid = _HDR.unpack_from(data, pos)
                if length < 16:
                    raise Bug(f"netlink: bad message length {length} in dump on {self.label}")
                if mseq == seq:
                    if typ == NLMSG_DONE:
                        return out
                    if typ == NLMSG_ERROR:
                        err = -struct.unpack_from("=i", data, pos + 16)[0]
                        if err == errno_mod.EINTR:  # dump interrupted by a change: retry
                            return self.dump(msg_type, decode, want_type, table, protocol)
                        raise KernelError("dump", self.label, err)
                    if typ == want_type:
                        out.append(decode(data, pos + 16, pos + length))
                pos += _align(length)

    def dump_links(self) -> List[LinkRec]:
        return self.dump(RTM_GETLINK, decode_link, RTM_NEWLINK)

    def dump_addrs(self) -> List[AddrRec]:
        return self.dump(RTM_GETADDR, decode_addr, RTM_NEWADDR)

    def dump_routes(self, table: int = 0, protocol: int = 0) -> List[RouteRec]:
        """Routes of every family; only those of ``table`` and ``protocol`` when not 0. The
        kernel filters (one namespace's main-table routes of ours are a few of a dozen, the
        rest being local-table and IPv6 kernel routes), so less is decoded here."""
        if self.strict:
            routes = self.dump(RTM_GETROUTE, decode_route, RTM_NEWROUTE, table, protocol)
        else:
            routes = self.dump(RTM_GETROUTE, decode_route, RTM_NEWROUTE)
        if table or protocol:  # tables above 255 and kernels without strict checking
            routes = [r for r in routes if (not table or r.table == table) and (not protocol or r.protocol == protocol)]
        return routes

    # writes -------------------------------------------------------------------------------------
    def queue_request(self, req: Request) -> None:
        self.queue.append(req)

    def flush(self) -> List[KernelError]:
        """Send every queued request (pipelined) and collect their ACKs. Returns the
        failures; requests keep their order, so later ones see earlier ones' effects."""
        errors: List[KernelError] = []
        queue, self.queue = self.queue, []
        for i in range(0, len(queue), self.CHUNK):
            errors.extend(self._send_chunk(queue[i : i + self.CHUNK]))
        return errors

    def _send_chunk(self, chunk: Sequence[Request]) -> List[KernelError]:
        by_seq: Dict[int, Request] = {}
        buf = bytearray()
        for req in chunk:
            seq = self.next_seq()
            struct.pack_into("=I", req.data, 8, seq)
            by_seq[seq] = req
            buf += req.data
        self.counter.add(len(chunk))
        self.sock.send(bytes(buf))
        errors: List[KernelError] = []
        while by_seq:
            data = self.sock.recv(1 << 20)
            pos, n = 0, len(data)
            while pos + 16 <= n:
                length, typ, flags, seq, _pid = _HDR.unpack_from(data, pos)
                if length < 16:
                    raise Bug(f"netlink: bad message length {length} on {self.label}")
                if typ == NLMSG_ERROR and seq in by_seq:
                    req = by_seq.pop(seq)
                    err = -struct.unpack_from("=i", data, pos + 16)[0]
                    if err and err not in req.ok_errnos:
                        detail = ""
                        if flags & NLM_F_ACK_TLVS:
                            # with CAP_ACK the error carries only the original header (16 bytes)
                            tlvs = parse_attrs(data, pos + 16 + 4 + 16, pos + length)
                            detail = _str(tlvs.get(NLMSGERR_ATTR_MSG)) or ""
                        req.error = KernelError(req.operation, req.obj, err, detail)
                        errors.append(req.error)
                pos += _align(length)
        return errors


class WriteCounter:
    """Counts netlink write requests (the idempotency test asserts zero on a no-op run)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n


