# cython: language_level=3, boundscheck=False, wraparound=True
"""The C twin of yamlfast's block-YAML reader: the same reading, line offsets instead of strings.

fastdns/zone/yamlfast.py ``_BlockReader`` reads the block YAML that kubectl,
go-yaml and yaml.dump write line by line, and is the reference: this module
follows it step for step (the same methods, the same NotPlain refusals), but
walks the text as ASCII octets with each line an offset pair, so indentation,
keys and the ``- `` of sequences are found without a Python string per line.
Python objects are made only for what the document holds: keys (cached) and
scalars, each resolved by PyYAML's own resolvers and constructor, as there.
A state file of 10k Services and 150k Pods (~50-75 MB) is read about five
times faster (issue 14: a YAML state file served within 5 s of start).
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc

import yaml

STR_TAG = "tag:yaml.org,2002:str"


cdef inline bint _keystart(unsigned char c) noexcept nogil:
    return (c >= 48 and c <= 57) or (c >= 65 and c <= 90) or (c >= 97 and c <= 122) or c == 95


cdef inline bint _keychar(unsigned char c) noexcept nogil:
    return _keystart(c) or c == 46 or c == 47 or c == 45  # . / -


cdef class Reader:
    """One document of ``data`` (ASCII, already checked by yamlfast.fast_yaml)."""

    cdef bytes data
    cdef const unsigned char* p
    cdef Py_ssize_t n
    cdef Py_ssize_t* ls  # line starts; line k is [ls[k], ls[k + 1] - 1)
    cdef Py_ssize_t nl
    cdef Py_ssize_t i
    cdef frozenset skip
    cdef dict cache
    cdef dict kcache
    cdef dict vcache
    cdef object resolvers
    cdef object constructor
    cdef object loader
    cdef object NotPlain
    cdef readonly bint unsafe

    def __cinit__(self, bytes data, skip, not_plain):
        cdef Py_ssize_t k, nl = 1, body = 0
        cdef unsigned char c, prev
        cdef bint unsafe = False
        self.data = data
        self.p = <const unsigned char*>data
        self.n = len(data)
        if self.n >= 4 and data[:4] == b"---\n":
            body = 4  # one leading marker is fine (yamlfast.fast_yaml)
        # yamlfast._PLAIN_TEXT and yaml_unsafe, in the one pass that counts lines
        for k in range(self.n):
            c = self.p[k]
            if c == 10:
                nl += 1
            elif c < 32 or c == 127:
                unsafe = True  # tabs, CR, control characters
            elif c == 38 or c == 42 or c == 33:  # & * !
                prev = self.p[k - 1] if k > body else 10
                if prev in b" \t\n\r\f\v[{,":
                    unsafe = True  # an anchor, alias or tag may start here
            if k >= body and (k == body or self.p[k - 1] == 10):
                if c == 37 or (k + 2 < self.n and (c == 45 or c == 46)
                               and self.p[k + 1] == c and self.p[k + 2] == c):
                    unsafe = True  # a directive, or a document marker (--- or ...)
        self.unsafe = unsafe
        self.ls = <Py_ssize_t*>PyMem_Malloc((nl + 1) * sizeof(Py_ssize_t))
        if self.ls == NULL:
            raise MemoryError()
        self.ls[0] = 0
        nl = 1
        for k in range(self.n):
            if self.p[k] == 10:
                self.ls[nl] = k + 1
                nl += 1
        self.ls[nl] = self.n + 1
        self.nl = nl
        self.i = 0
        self.skip = frozenset(f"kind: {k}".encode() for k in skip)
        self.cache = {}
        self.kcache = {}
        self.vcache = {}
        self.resolvers = yaml.resolver.Resolver.yaml_implicit_resolvers
        self.constructor = yaml.constructor.SafeConstructor()
        self.loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        self.NotPlain = not_plain

    def __dealloc__(self):
        if self.ls != NULL:
            PyMem_Free(self.ls)

    # -- lines as offsets ----------------------------------------------------

    cdef inline Py_ssize_t _end(self, Py_ssize_t k) noexcept:
        return self.ls[k + 1] - 1

    cdef inline Py_ssize_t _indent(self, Py_ssize_t k) noexcept:
        cdef Py_ssize_t s = self.ls[k], e = self.ls[k + 1] - 1
        while s < e and self.p[s] == 32:
            s += 1
        return s - self.ls[k]

    cdef inline bint _blank(self, Py_ssize_t k) noexcept:
        """A blank or comment line."""
        cdef Py_ssize_t s = self.ls[k], e = self.ls[k + 1] - 1
        while s < e and self.p[s] == 32:
            s += 1
        return s >= e or self.p[s] == 35

    cdef inline bint _dash(self, Py_ssize_t s, Py_ssize_t e) noexcept:
        """``- `` or a lone ``-`` at offset ``s`` of a line ending at ``e``."""
        return s < e and self.p[s] == 45 and (s + 1 == e or self.p[s + 1] == 32)

    cdef inline str _text(self, Py_ssize_t s, Py_ssize_t e):
        return self.data[s:e].decode("ascii")

    cdef Py_ssize_t _key_end(self, Py_ssize_t s, Py_ssize_t e) noexcept:
        """yamlfast._KEY at ``s``: the offset of the ':' ending the key, or -1."""
        cdef Py_ssize_t k = s
        if k >= e or not _keystart(self.p[k]):
            return -1
        k += 1
        while k < e and _keychar(self.p[k]):
            k += 1
        if k >= e or self.p[k] != 58:
            return -1
        if k + 1 < e and self.p[k + 1] != 32:
            return -1
        return k

    # -- the reader (yamlfast._BlockReader, method for method) ----------------

    def document(self):
        cdef Py_ssize_t s
        self._skip()
        if self.i < self.nl:
            s = self.ls[self.i]
            if self._end(self.i) - s == 3 and self.data[s:s + 3] == b"---":
                self.i += 1
                self._skip()
        if self.i >= self.nl:
            return None
        if self.p[self.ls[self.i]] == 32:
            raise self.NotPlain("an indented document")
        value = self._block(0)
        self._skip()
        if self.i < self.nl:
            raise self.NotPlain(f"line {self.i + 1}: more than one document, or odd indentation")
        return value

    cdef void _skip(self) noexcept:
        while self.i < self.nl and self._blank(self.i):
            self.i += 1

    cdef object _block(self, Py_ssize_t indent):
        cdef Py_ssize_t s = self.ls[self.i] + indent
        if self._dash(s, self._end(self.i)):
            return self._sequence(indent)
        return self._mapping(indent, s)

    cdef dict _mapping(self, Py_ssize_t indent, Py_ssize_t c):
        cdef dict out = {}
        cdef Py_ssize_t e, k, r, n
        cdef bytes kb
        while True:
            e = self._end(self.i)
            k = self._key_end(c, e)
            if k < 0:
                raise self.NotPlain(f"line {self.i + 1}: not a plain key")
            kb = self.data[c:k]
            key = self.kcache.get(kb, self)
            if key is self:
                key = self._plain(kb.decode("ascii"))
                self.kcache[kb] = key
            if key == "<<":
                raise self.NotPlain("a merge key")
            r = k + 1
            while r < e and self.p[r] == 32:
                r += 1
            self.i += 1
            if r < e:
                out[key] = self._value(r, e, indent)
            else:
                out[key] = self._nested(indent, indent)
            if self.i >= self.nl:
                return out
            if self._blank(self.i):
                self._skip()
                if self.i >= self.nl:
                    return out
            n = self._indent(self.i)
            if n < indent:
                return out
            if n > indent:
                raise self.NotPlain(f"line {self.i + 1}: indented further than its mapping")
            c = self.ls[self.i] + n
            if self._dash(c, self._end(self.i)):
                return out  # the sequence this mapping is the value of goes on

    cdef object _nested(self, Py_ssize_t indent, Py_ssize_t allow_seq_at):
        cdef Py_ssize_t n
        self._skip()
        if self.i >= self.nl:
            return self._plain("")
        n = self._indent(self.i)
        if n > indent:
            return self._block(n)
        if n == allow_seq_at and self._dash(self.ls[self.i] + n, self._end(self.i)):
            return self._sequence(n)
        return self._plain("")

    cdef list _sequence(self, Py_ssize_t indent):
        cdef list out = []
        cdef Py_ssize_t s, e, n
        while True:
            if indent == 0 and self.skip:
                kind = self._skipped()
                if kind is not None:
                    out.append({"kind": kind})
                    self._skip()
                    if self.i >= self.nl or not self._dash(self.ls[self.i], self._end(self.i)):
                        return out  # the sequence ends (the next top-level key)
                    continue
            e = self._end(self.i)
            s = min(self.ls[self.i] + indent + 1, e)
            while s < e and self.p[s] == 32:
                s += 1
            if s >= e:
                self.i += 1
                out.append(self._nested(indent, -1))
            else:
                if self._dash(s, e):
                    raise self.NotPlain(f"line {self.i + 1}: a sequence in a sequence's line")
                if self._key_end(s, e) >= 0:
                    out.append(self._mapping(s - self.ls[self.i], s))
                else:
                    self.i += 1
                    out.append(self._value(s, e, indent))
            self._skip()
            if self.i >= self.nl:
                return out
            n = self._indent(self.i)
            if n != indent or not self._dash(self.ls[self.i] + n, self._end(self.i)):
                if n > indent:
                    raise self.NotPlain(f"line {self.i + 1}: indented further than its sequence")
                return out

    cdef object _skipped(self):
        """yamlfast._BlockReader._skipped: a top-level item of a kind in ``skip``."""
        cdef Py_ssize_t j = self.i + 1, s, e
        kind = None
        s = self.ls[self.i]
        e = self._end(self.i)
        if e - s > 8 and self.p[s + 2] == 107 and self.data[s + 2:e] in self.skip:  # 'k'
            kind = self.data[s + 2:e]
        while j < self.nl:
            s = self.ls[j]
            e = self._end(j)
            if s < e and self.p[s] != 32 and self.p[s] != 35:
                break  # the next item, or the next top-level key
            if (kind is None and e - s > 10 and self.p[s] == 32 and self.p[s + 1] == 32
                    and self.p[s + 2] == 107 and self.data[s + 2:e] in self.skip):
                kind = self.data[s + 2:e]
            j += 1
        if kind is None:
            return None
        self.i = j
        return kind[len(b"kind: "):].decode("ascii")

    cdef object _value(self, Py_ssize_t s, Py_ssize_t e, Py_ssize_t indent):
        """The scalar at [s, e) of the current line, which the reader has passed.

        One-line scalars are cached by their octets (yamlfast's ``cache`` by
        text): the same octets always read as the same value. Block scalars
        (their lines follow) and flow collections (mutable) are not."""
        cdef bytes raw = self.data[s:e]
        got = self.vcache.get(raw, self)
        if got is not self:
            return got
        value = self._scalar(raw.decode("ascii"), indent)
        c = self.p[s]
        if c != 124 and c != 62 and c != 91 and c != 123 and len(self.vcache) < 100_000:
            self.vcache[raw] = value  # not | > [ {
        return value

    cdef object _scalar(self, str text, Py_ssize_t indent):
        text = text.rstrip(" ")
        c = text[0]
        if c == "'":
            inner = text[1:-1]
            if len(text) < 2 or text[-1] != "'" or "'" in inner.replace("''", ""):
                raise self.NotPlain(f"line {self.i}: a quoted scalar that goes on")
            return inner.replace("''", "'")
        if c == '"':
            inner = text[1:-1]
            if len(text) < 2 or text[-1] != '"' or '"' in inner:
                raise self.NotPlain(f"line {self.i}: a quoted scalar that goes on")
            if "\\" in inner:
                return self._pyyaml(text)
            return inner
        if c in "[{":
            if text in ("[]", "{}"):
                return [] if c == "[" else {}
            return self._pyyaml(text)
        if c in "|>":
            return self._block_scalar(text, indent)
        if c in "-?:" and (len(text) == 1 or text[1] == " "):
            raise self.NotPlain(f"line {self.i}: an indicator")
        if c in ",#&*!%@`]}" or " #" in text or ": " in text or text.endswith(":"):
            raise self.NotPlain(f"line {self.i}: not a plain scalar")
        return self._plain(text)

    cdef object _plain(self, str text):
        got = self.cache.get(text, self)
        if got is not self:
            return got
        tag = STR_TAG
        for t, regexp in self.resolvers.get(text[:1], ()):
            if regexp.match(text):
                tag = t
                break
        if tag == STR_TAG:
            value = text
        elif tag not in self.constructor.yaml_constructors:
            raise self.NotPlain(f"a scalar tagged {tag}")  # '<<', '='
        else:
            node = yaml.ScalarNode(tag, text)
            value = self.constructor.yaml_constructors[tag](self.constructor, node)
            if isinstance(value, (list, dict, set)):
                raise self.NotPlain("a collection from a scalar")
        if len(self.cache) < 100_000:
            self.cache[text] = value
        return value

    cdef object _pyyaml(self, str text):
        try:
            return yaml.load("x: " + text + "\n", Loader=self.loader)["x"]
        except yaml.YAMLError:
            raise self.NotPlain(f"line {self.i}: PyYAML's to read") from None

    cdef object _block_scalar(self, str header, Py_ssize_t indent):
        cdef Py_ssize_t start, k
        if any(ch.isdigit() for ch in header) or "+" in header or " #" in header:
            raise self.NotPlain(f"line {self.i}: a block scalar with an indicator")
        start = self.i
        while self.i < self.nl:
            if (self._indent(self.i) < self._end(self.i) - self.ls[self.i]
                    and self._indent(self.i) <= indent):
                break
            self.i += 1
        body = [self._text(self.ls[k], self._end(k)) for k in range(start, self.i)]
        while body and not body[-1].strip(" "):  # trailing blank lines: chomping's
            body.pop()
            self.i -= 1
        return self._pyyaml(header + "\n" + "\n".join(body))
