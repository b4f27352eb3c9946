"""The text CoreDNS prints for DNS numbers: miekg/dns's mnemonics.

CoreDNS's ``log`` and ``errors`` lines show a query's type, class and the
answer's rcode through miekg/dns, so fastdns prints from the same tables,
taken from miekg/dns v1.1.72 (the version coredns/coredns's ``go.mod``
requires):

- types: ``TypeToString`` (``ztypes.go``, generated from the numbers in
  ``types.go``); ``Type.String`` (``defaults.go``) writes a type the map
  lacks as ``TYPE<n>``, RFC 3597 §5's generic form
  (``request/request.go`` ``Type``, ``plugin/errors/errors.go``);
- classes: ``ClassToString`` (``msg.go``); ``Class.String``
  (``defaults.go``) writes ``CLASS<n>`` for a class the map lacks and also
  for a mnemonic that is a type's too, so class 255 is ``CLASS255``, not
  ``ANY`` (``request/request.go`` ``Class``);
- rcodes: ``RcodeToString`` lives with the other name texts in
  fastdns.names (``rcode_text``).

Runtime code: the standard library only. The test suite compares the type
table with dnspython's (a test extra) over all 65536 values, with miekg's
known differences listed there, so the copy cannot drift unnoticed.
"""

from __future__ import annotations

TYPES: dict[int, str] = {
    0: "None", 1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP", 18: "AFSDB",
    19: "X25", 20: "ISDN", 21: "RT", 23: "NSAP-PTR", 24: "SIG", 25: "KEY", 26: "PX", 27: "GPOS",
    28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID", 32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR",
    36: "KX", 37: "CERT", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
    45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3",
    51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 57: "RKEY", 58: "TALINK",
    59: "CDS", 60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB",
    65: "HTTPS", 99: "SPF", 100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "NID",
    105: "L32", 106: "L64", 107: "LP", 108: "EUI48", 109: "EUI64", 128: "NXNAME", 249: "TKEY",
    250: "TSIG", 251: "IXFR", 252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI",
    257: "CAA", 258: "AVC", 260: "AMTRELAY", 261: "RESINFO", 32768: "TA", 32769: "DLV",
    65535: "Reserved",
}

CLASSES: dict[int, str] = {1: "IN", 2: "CS", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}

# Class.String: a class mnemonic that also names a type is ambiguous, so not used.
_TYPE_NAMES = frozenset(TYPES.values())
_CLASS_TEXT = {c: s for c, s in CLASSES.items() if s not in _TYPE_NAMES}


def type_text(qtype: int) -> str:
    """miekg/dns ``Type(qtype).String()``: the mnemonic, else ``TYPE<n>``."""
    return TYPES.get(qtype) or f"TYPE{qtype}"


def class_text(qclass: int) -> str:
    """miekg/dns ``Class(qclass).String()``: the unambiguous mnemonic, else ``CLASS<n>``."""
    return _CLASS_TEXT.get(qclass) or f"CLASS{qclass}"

