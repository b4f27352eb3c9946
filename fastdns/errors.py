"""Errors raised by the wire codec (both the Cython core and its Python twin).

Each class's docstring is its message, as in dnspython's ``dns.exception``:
the server answers a ``FormError`` with FORMERR and goes on, drops a packet
on ``DropPacket``, and never lets anything else escape the codec.
"""


class WireError(Exception):
    """Malformed DNS message."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (self.__doc__,)))


class DropPacket(WireError):
    """The packet must not be answered (shorter than a header, or QR=1)."""


class FormError(WireError):
    """The DNS message is malformed."""


class ShortMessage(FormError):
    """The message ends before the data its header or lengths announce."""


class QuestionCount(FormError):
    """A query must carry exactly one question."""


class LabelTooLong(FormError):
    """A label is longer than 63 octets."""


class NameTooLong(FormError):
    """A name is longer than 255 octets."""


class BadLabelType(FormError):
    """A label type other than a normal label or a compression pointer (RFC 6891 §5)."""


class CompressionInQuestion(FormError):
    """A query's question name must not use compression pointers."""


class BadPointer(FormError):
    """A compression pointer does not point strictly backwards (RFC 9267 §2)."""


class PointerLoop(FormError):
    """Too many compression pointers followed in one name (RFC 9267 §2)."""


class BadRdata(FormError):
    """An RR's rdata length runs past the end of the message."""


class DuplicateOPT(FormError):
    """More than one OPT record (RFC 6891 §6.1.1)."""


class BadOPT(FormError):
    """The OPT record is malformed (owner not root, or an option overruns it)."""


class TrailingData(FormError):
    """Octets follow the last record the header announces."""


class BadEncoding(FormError):
    """A name given to the encoder is not a valid domain name."""
