"""Realistic SIP call flows for tests, as HEP captures with real timestamps.

Pure: builds SIP messages and `HepPacket`s; storing them is the caller's business
(`tests/integration/analysis_support.py` sends them through the real pipeline).

Topology of the generated flows (one SBC/proxy capturing both its sides)::

    alice 192.0.2.10:5060      dave 192.0.2.11:5060
              \\                     /
               SBC/proxy 192.0.2.1:5060 (b2bua legs leave from :5080)
              /                      \\
    bob 198.51.100.20:5060     carol 198.51.100.21:5060
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import count

from pipeline.hep import HepPacket

DOMAIN = "example.com"


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int = 5060

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"


ALICE = Endpoint("192.0.2.10")
DAVE = Endpoint("192.0.2.11")
PROXY = Endpoint("192.0.2.1")
PROXY_B2BUA = Endpoint("192.0.2.1", 5080)
BOB = Endpoint("198.51.100.20")
CAROL = Endpoint("198.51.100.21")

UA_ALICE = "Yealink SIP-T46S 66.86.0.15"
UA_DAVE = "Grandstream GXP2170 1.0.11.3"
UA_BOB = "Polycom VVX 450 6.4.3"
UA_CAROL = "Cisco CP-8841 12.8.1"


@dataclass(frozen=True, slots=True)
class Capture:
    """One captured packet: who sent what to whom, when (µs since the epoch)."""

    time_us: int
    src: Endpoint
    dst: Endpoint
    payload: bytes
    proto_type: int = 1
    correlation_id: str | None = None

    def to_packet(self, capture_id: int = 2042) -> HepPacket:
        return HepPacket(
            version=3,
            ip_family=2,
            ip_proto=17,
            src_ip=self.src.ip,
            dst_ip=self.dst.ip,
            src_port=self.src.port,
            dst_port=self.dst.port,
            ts_sec=self.time_us // 1_000_000,
            ts_usec=self.time_us % 1_000_000,
            proto_type=self.proto_type,
            capture_id=capture_id,
            payload=self.payload,
            correlation_id=self.correlation_id,
        )


_branches = count(1)


@dataclass(frozen=True, slots=True)
class Party:
    user: str
    endpoint: Endpoint
    tag: str
    user_agent: str | None = None


@dataclass
class Dialog:
    """The messages of one Call-ID, built in time order.

    `caller` sends the initial INVITE; `request` and `response` take the side that
    sends the message (`by_caller`), so From/To and tags come out as RFC 3261 wants:
    requests from the callee swap From and To, responses copy the request's headers.
    """

    call_id: str
    caller: Party
    callee_user: str
    start_us: int
    correlation_id: str | None = None
    captures: list[Capture] = field(default_factory=list)

    def _at(self, ms: float) -> int:
        return self.start_us + round(ms * 1000)

    def request(
        self,
        ms: float,
        method: str,
        src: Endpoint,
        dst: Endpoint,
        *,
        cseq: int,
        to_tag: str | None = None,
        callee: Party | None = None,
        by_caller: bool = True,
        ruri_user: str | None = None,
        branch: str | None = None,
        cseq_method: str | None = None,
    ) -> Message:
        """A request; `callee` is the answering party (its tag and agent) for in-dialog ones."""
        if by_caller:
            from_user, from_tag = self.caller.user, self.caller.tag
            to_user = self.callee_user
            agent = self.caller.user_agent
            contact = (self.caller.user, self.caller.endpoint)
        else:
            assert callee is not None
            from_user, from_tag = self.callee_user, callee.tag
            to_user, to_tag = self.caller.user, self.caller.tag
            agent = callee.user_agent
            contact = (callee.user, callee.endpoint)
        message = Message(
            method=method,
            ruri=f"sip:{ruri_user or to_user}@{DOMAIN}",
            call_id=self.call_id,
            from_user=from_user,
            from_tag=from_tag,
            to_user=to_user,
            to_tag=to_tag,
            cseq=cseq,
            cseq_method=cseq_method or method,
            branch=branch or f"z9hG4bK{next(_branches):06d}",
            via=src,
            user_agent=agent,
            contact=contact,
        )
        self.send(ms, src, dst, message.render())
        return message

    def response(
        self,
        ms: float,
        request: Message,
        status: int,
        reason: str,
        src: Endpoint,
        dst: Endpoint,
        *,
        to_tag: str | None = None,
        user_agent: str | None = None,
        expires: int | None = None,
    ) -> None:
        self.send(
            ms, src, dst, request.render_response(status, reason, to_tag, user_agent, expires)
        )

    def send(self, ms: float, src: Endpoint, dst: Endpoint, payload: bytes,
             proto_type: int = 1) -> None:
        self.captures.append(
            Capture(self._at(ms), src, dst, payload, proto_type, self.correlation_id)
        )


@dataclass(frozen=True, slots=True)
class Message:
    method: str
    ruri: str
    call_id: str
    from_user: str
    from_tag: str
    to_user: str
    to_tag: str | None
    cseq: int
    cseq_method: str
    branch: str
    via: Endpoint
    user_agent: str | None
    contact: tuple[str, Endpoint]
    expires: int | None = None

    def _headers(self, to_tag: str | None) -> list[str]:
        to = f"<sip:{self.to_user}@{DOMAIN}>"
        if to_tag:
            to += f";tag={to_tag}"
        return [
            f"Via: SIP/2.0/UDP {self.via.addr};branch={self.branch}",
            f'From: "{self.from_user.title()}" <sip:{self.from_user}@{DOMAIN}>;tag={self.from_tag}',
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {self.cseq_method}",
        ]

    def render(self, expires: int | None = None) -> bytes:
        lines = [f"{self.method} {self.ruri} SIP/2.0", *self._headers(self.to_tag)]
        lines.append("Max-Forwards: 70")
        user, endpoint = self.contact
        lines.append(f"Contact: <sip:{user}@{endpoint.addr}>")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if self.user_agent:
            lines.append(f"User-Agent: {self.user_agent}")
        return _finish(lines)

    def render_response(self, status: int, reason: str, to_tag: str | None,
                        user_agent: str | None, expires: int | None) -> bytes:
        lines = [f"SIP/2.0 {status} {reason}", *self._headers(to_tag or self.to_tag)]
        if expires is not None:
            user, endpoint = self.contact
            lines.append(f"Contact: <sip:{user}@{endpoint.addr}>;expires={expires}")
        if user_agent:
            lines.append(f"User-Agent: {user_agent}")
        if status == 401:
            lines.append(f'WWW-Authenticate: Digest realm="{DOMAIN}", nonce="5f2b1c", '
                         'algorithm=MD5, qop="auth"')
        if status == 407:
            lines.append(f'Proxy-Authenticate: Digest realm="{DOMAIN}", nonce="7a1d9e"')
        return _finish(lines)


def _finish(lines: list[str]) -> bytes:
    return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()


# --- the flows -------------------------------------------------------------------------

def answered_b2bua(start_us: int) -> list[Capture]:
    """alice calls bob through a B2BUA: two Call-IDs tied by the HEP correlation id.

    alice hangs up after 60 s. The b-leg's packets carry the a-leg's Call-ID as
    correlation id, as a B2BUA's capture agent sends them.
    """
    a_id = "3848276298220188511@192.0.2.10"
    alice = Party("alice", ALICE, "a1001", UA_ALICE)
    bob = Party("bob", BOB, "b2001", UA_BOB)
    sbc = Party("alice", PROXY_B2BUA, "s3001", "acme-sbc 9.1")
    a = Dialog(a_id, alice, "bob", start_us)
    b = Dialog("b2b-9f3e1c@192.0.2.1", sbc, "bob", start_us, correlation_id=a_id)
    inv_a = a.request(0, "INVITE", ALICE, PROXY, cseq=1)
    a.response(10, inv_a, 100, "Trying", PROXY, ALICE)
    inv_b = b.request(15, "INVITE", PROXY_B2BUA, BOB, cseq=101)
    b.response(25, inv_b, 100, "Trying", BOB, PROXY_B2BUA)
    b.response(500, inv_b, 180, "Ringing", BOB, PROXY_B2BUA, to_tag=bob.tag, user_agent=UA_BOB)
    a.response(505, inv_a, 180, "Ringing", PROXY, ALICE, to_tag="s3002")
    b.response(3500, inv_b, 200, "OK", BOB, PROXY_B2BUA, to_tag=bob.tag, user_agent=UA_BOB)
    a.response(3505, inv_a, 200, "OK", PROXY, ALICE, to_tag="s3002", user_agent="acme-sbc 9.1")
    a.request(3520, "ACK", ALICE, PROXY, cseq=1, to_tag="s3002")
    b.request(3525, "ACK", PROXY_B2BUA, BOB, cseq=101, to_tag=bob.tag)
    bye_a = a.request(63520, "BYE", ALICE, PROXY, cseq=2, to_tag="s3002")
    bye_b = b.request(63525, "BYE", PROXY_B2BUA, BOB, cseq=102, to_tag=bob.tag)
    b.response(63540, bye_b, 200, "OK", BOB, PROXY_B2BUA)
    a.response(63545, bye_a, 200, "OK", PROXY, ALICE)
    # RTCP report and a proxy log line for the a-leg, tied by the correlation id.
    rtcp = {"type": 200, "ssrc": 1234, "report_count": 1,
            "report_blocks": [{"fraction_lost": 0, "packets_lost": 0, "ia_jitter": 4}]}
    a.correlation_id = a_id
    a.send(13520, BOB, ALICE, json.dumps(rtcp).encode(), proto_type=5)
    a.send(63530, PROXY, PROXY, f"call {a_id} ended by caller".encode(), proto_type=100)
    a.correlation_id = None
    return sorted(a.captures + b.captures, key=lambda c: c.time_us)


def busy(start_us: int) -> list[Capture]:
    d = Dialog("busy-77a1@192.0.2.10", Party("alice", ALICE, "a1101", UA_ALICE), "bob", start_us)
    inv = d.request(0, "INVITE", ALICE, PROXY, cseq=1)
    d.response(20, inv, 100, "Trying", PROXY, ALICE)
    d.response(400, inv, 180, "Ringing", PROXY, ALICE, to_tag="b2101", user_agent=UA_BOB)
    d.response(2400, inv, 486, "Busy Here", PROXY, ALICE, to_tag="b2101", user_agent=UA_BOB)
    d.request(2410, "ACK", ALICE, PROXY, cseq=1, to_tag="b2101", branch=inv.branch)
    return d.captures


def not_found(start_us: int) -> list[Capture]:
    d = Dialog("nf-0c55@192.0.2.11", Party("dave", DAVE, "d1201", UA_DAVE), "nobody", start_us)
    inv = d.request(0, "INVITE", DAVE, PROXY, cseq=1)
    d.response(20, inv, 100, "Trying", PROXY, DAVE)
    d.response(150, inv, 404, "Not Found", PROXY, DAVE, to_tag="p1201")
    d.request(160, "ACK", DAVE, PROXY, cseq=1, to_tag="p1201", branch=inv.branch)
    return d.captures


def cancelled(start_us: int) -> list[Capture]:
    d = Dialog("cx-51f0@192.0.2.10", Party("alice", ALICE, "a1301", UA_ALICE), "bob", start_us)
    inv = d.request(0, "INVITE", ALICE, PROXY, cseq=1)
    d.response(20, inv, 100, "Trying", PROXY, ALICE)
    d.response(300, inv, 180, "Ringing", PROXY, ALICE, to_tag="b2301")
    cancel = d.request(5300, "CANCEL", ALICE, PROXY, cseq=1, branch=inv.branch)
    d.response(5310, cancel, 200, "OK", PROXY, ALICE)
    d.response(5320, inv, 487, "Request Terminated", PROXY, ALICE, to_tag="b2301")
    d.request(5330, "ACK", ALICE, PROXY, cseq=1, to_tag="b2301", branch=inv.branch)
    return d.captures


def timeout_408(start_us: int) -> list[Capture]:
    d = Dialog("to-408e@192.0.2.10", Party("alice", ALICE, "a1401", UA_ALICE), "erin", start_us)
    inv = d.request(0, "INVITE", ALICE, PROXY, cseq=1)
    d.response(20, inv, 100, "Trying", PROXY, ALICE)
    d.response(32000, inv, 408, "Request Timeout", PROXY, ALICE, to_tag="p1401")
    d.request(32010, "ACK", ALICE, PROXY, cseq=1, to_tag="p1401", branch=inv.branch)
    return d.captures


def no_final(start_us: int) -> list[Capture]:
    """Nobody answers at all: the INVITE is retransmitted (Timer A: 0.5 s, 1 s, 2 s)."""
    d = Dialog("nofinal-2d@192.0.2.10", Party("alice", ALICE, "a1501", UA_ALICE), "frank",
               start_us)
    inv = d.request(0, "INVITE", ALICE, PROXY, cseq=1)
    for ms in (500, 1500, 3500):
        d.send(ms, ALICE, PROXY, inv.render())
    return d.captures


def reinvite(start_us: int) -> list[Capture]:
    """dave calls bob; both sides re-INVITE; bob's re-INVITE (its own CSeq 1) gets 488."""
    dave = Party("dave", DAVE, "d1601", UA_DAVE)
    bob = Party("bob", BOB, "b2601", UA_BOB)
    d = Dialog("reinv-6a@192.0.2.11", dave, "bob", start_us)
    inv = d.request(0, "INVITE", DAVE, PROXY, cseq=1)
    d.response(20, inv, 100, "Trying", PROXY, DAVE)
    d.response(800, inv, 183, "Session Progress", PROXY, DAVE, to_tag=bob.tag)
    d.response(2000, inv, 200, "OK", PROXY, DAVE, to_tag=bob.tag, user_agent=UA_BOB)
    d.request(2010, "ACK", DAVE, PROXY, cseq=1, to_tag=bob.tag)
    re1 = d.request(12000, "INVITE", DAVE, PROXY, cseq=2, to_tag=bob.tag)
    d.response(12050, re1, 200, "OK", PROXY, DAVE, to_tag=bob.tag, user_agent=UA_BOB)
    d.request(12060, "ACK", DAVE, PROXY, cseq=2, to_tag=bob.tag)
    re2 = d.request(22000, "INVITE", PROXY, DAVE, cseq=1, by_caller=False, callee=bob)
    d.response(22030, re2, 488, "Not Acceptable Here", DAVE, PROXY, user_agent=UA_DAVE)
    d.request(22040, "ACK", PROXY, DAVE, cseq=1, by_caller=False, callee=bob,
              branch=re2.branch)
    bye = d.request(32000, "BYE", PROXY, DAVE, cseq=2, by_caller=False, callee=bob)
    d.response(32010, bye, 200, "OK", DAVE, PROXY, user_agent=UA_DAVE)
    return d.captures


def forked(start_us: int) -> list[Capture]:
    """alice calls "sales"; the proxy forks to bob and carol, both ring, carol answers,
    the proxy cancels bob's branch; carol hangs up. Captured on both sides of the proxy."""
    alice = Party("alice", ALICE, "a1701", UA_ALICE)
    d = Dialog("fork-3c1d@192.0.2.10", alice, "sales", start_us)
    inv = d.request(0, "INVITE", ALICE, PROXY, cseq=1)
    d.response(10, inv, 100, "Trying", PROXY, ALICE)
    to_bob = d.request(20, "INVITE", PROXY, BOB, cseq=1, ruri_user="bob")
    to_carol = d.request(21, "INVITE", PROXY, CAROL, cseq=1, ruri_user="carol")
    d.response(300, to_bob, 180, "Ringing", BOB, PROXY, to_tag="b2701", user_agent=UA_BOB)
    d.response(305, inv, 180, "Ringing", PROXY, ALICE, to_tag="b2701", user_agent=UA_BOB)
    d.response(450, to_carol, 180, "Ringing", CAROL, PROXY, to_tag="c2701",
               user_agent=UA_CAROL)
    d.response(455, inv, 180, "Ringing", PROXY, ALICE, to_tag="c2701", user_agent=UA_CAROL)
    d.response(4000, to_carol, 200, "OK", CAROL, PROXY, to_tag="c2701", user_agent=UA_CAROL)
    d.response(4005, inv, 200, "OK", PROXY, ALICE, to_tag="c2701", user_agent=UA_CAROL)
    cancel = d.request(4010, "CANCEL", PROXY, BOB, cseq=1, ruri_user="bob",
                       branch=to_bob.branch)
    d.response(4015, cancel, 200, "OK", BOB, PROXY)
    d.response(4020, to_bob, 487, "Request Terminated", BOB, PROXY, to_tag="b2701")
    d.request(4025, "ACK", PROXY, BOB, cseq=1, to_tag="b2701", branch=to_bob.branch)
    d.request(4100, "ACK", ALICE, PROXY, cseq=1, to_tag="c2701")
    d.request(4105, "ACK", PROXY, CAROL, cseq=1, to_tag="c2701")
    carol = Party("carol", CAROL, "c2701", UA_CAROL)
    bye = d.request(34000, "BYE", CAROL, PROXY, cseq=1, by_caller=False, callee=carol)
    d.request(34005, "BYE", PROXY, ALICE, cseq=1, by_caller=False, callee=carol,
              branch=bye.branch)
    d.response(34020, bye, 200, "OK", ALICE, PROXY, user_agent=UA_ALICE)
    d.response(34025, bye, 200, "OK", PROXY, CAROL)
    return d.captures


def auth_challenged(start_us: int) -> list[Capture]:
    """dave's first INVITE is challenged (407); the retry with CSeq 2 is answered."""
    d = Dialog("auth-8b@192.0.2.11", Party("dave", DAVE, "d1801", UA_DAVE), "alice", start_us)
    inv1 = d.request(0, "INVITE", DAVE, PROXY, cseq=1)
    d.response(15, inv1, 407, "Proxy Authentication Required", PROXY, DAVE, to_tag="p1801")
    d.request(25, "ACK", DAVE, PROXY, cseq=1, to_tag="p1801", branch=inv1.branch)
    inv2 = d.request(40, "INVITE", DAVE, PROXY, cseq=2)
    d.response(60, inv2, 100, "Trying", PROXY, DAVE)
    d.response(700, inv2, 180, "Ringing", PROXY, DAVE, to_tag="a1801", user_agent=UA_ALICE)
    d.response(5040, inv2, 200, "OK", PROXY, DAVE, to_tag="a1801", user_agent=UA_ALICE)
    d.request(5050, "ACK", DAVE, PROXY, cseq=2, to_tag="a1801")
    bye = d.request(125040, "BYE", DAVE, PROXY, cseq=3, to_tag="a1801")
    d.response(125060, bye, 200, "OK", PROXY, DAVE)
    return d.captures


def _register(d: Dialog, ms: float, cseq: int, phone: Endpoint, expires: int) -> Message:
    message = Message(
        method="REGISTER", ruri=f"sip:{DOMAIN}", call_id=d.call_id,
        from_user=d.caller.user, from_tag=d.caller.tag, to_user=d.caller.user, to_tag=None,
        cseq=cseq, cseq_method="REGISTER", branch=f"z9hG4bK{next(_branches):06d}",
        via=phone, user_agent=d.caller.user_agent, contact=(d.caller.user, phone),
    )
    d.send(ms, phone, PROXY, message.render(expires=expires))
    return message


def registrations(start_us: int) -> list[Capture]:
    """alice: 401 then 200 (expires 3600); dave: 401 then 403 (wrong password);
    frank: 401 and no retry."""
    out: list[Capture] = []
    alice = Dialog("reg-alice-1@192.0.2.10", Party("alice", ALICE, "r1", UA_ALICE), "alice",
                   start_us)
    r1 = _register(alice, 0, 1, ALICE, 3600)
    alice.response(5, r1, 401, "Unauthorized", PROXY, ALICE, to_tag="x1")
    r2 = _register(alice, 30, 2, ALICE, 3600)
    alice.response(40, r2, 200, "OK", PROXY, ALICE, to_tag="x2", expires=3600)
    out += alice.captures
    frank_ep = Endpoint("192.0.2.13")
    dave = Dialog("reg-dave-1@192.0.2.11", Party("dave", DAVE, "r2", UA_DAVE), "dave",
                  start_us + 1_000_000)
    r1 = _register(dave, 0, 1, DAVE, 1800)
    dave.response(5, r1, 401, "Unauthorized", PROXY, DAVE, to_tag="x3")
    r2 = _register(dave, 30, 2, DAVE, 1800)
    dave.response(40, r2, 403, "Forbidden", PROXY, DAVE, to_tag="x4")
    out += dave.captures
    frank = Dialog("reg-frank-1@192.0.2.13", Party("frank", frank_ep, "r3", UA_DAVE), "frank",
                   start_us + 2_000_000)
    r1 = _register(frank, 0, 1, frank_ep, 600)
    frank.response(5, r1, 401, "Unauthorized", PROXY, frank_ep, to_tag="x5")
    out += frank.captures
    return out


#: Every generated flow, started one after the other (seconds apart).
FLOWS = (
    ("answered", answered_b2bua),
    ("busy", busy),
    ("not_found", not_found),
    ("cancelled", cancelled),
    ("timeout_408", timeout_408),
    ("no_final", no_final),
    ("reinvite", reinvite),
    ("forked", forked),
    ("auth_challenged", auth_challenged),
    ("registrations", registrations),
)
FLOW_SPACING_US = 10_000_000


def all_flows(start_us: int) -> list[Capture]:
    """Every flow, the n-th starting n * 10 s after `start_us`, in capture order."""
    captures: list[Capture] = []
    for n, (_, build) in enumerate(FLOWS):
        captures += build(start_us + n * FLOW_SPACING_US)
    return sorted(captures, key=lambda c: c.time_us)
