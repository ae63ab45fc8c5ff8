# The CA certificates of mqtt.ca_file (PEM or DER, one or several) as the DER blocks mbedTLS loads:
# the device's mbedTLS may lack PEM parsing (the unix port's does), and one DER buffer holds only
# one certificate for it. Pure: config.py checks the file with it at boot and on the host (`make
# config`), mqtt_connect.py loads it at each TLS connect. In memory only while used.
import binascii
import os

MAX_BYTES = 8192  # a CA or a few (PEM: ~1-2 KB each); a larger file is the wrong one
_SPACE = (b"\n", b"\r", b" ", b"\t")  # what PEM text may hold besides base64
_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"


def _der_len(d, i):
    """Length of the certificate's DER at d[i:], header included, or 0 when there is none: a
    SEQUENCE that starts with a SEQUENCE (the signed part; a key or PKCS#7 file starts otherwise)."""
    if len(d) < i + 2 or d[i] != 0x30:
        return 0
    n = d[i + 1]
    h = 2
    if n >= 0x80:
        k = n & 0x7F
        if k < 1 or k > 3 or len(d) < i + 2 + k:
            return 0
        n = 0
        for j in range(k):
            n = n * 256 + d[i + 2 + j]
        h += k
    if len(d) <= i + h or d[i + h] != 0x30:
        return 0
    return h + n


def _split_der(d, what):
    out = []
    i = 0
    while i < len(d):
        n = _der_len(d, i)
        if n == 0 or i + n > len(d):
            raise ValueError("%s is not a certificate (damaged, cut short, or a key or other file)" % what)
        out.append(d if n == len(d) else d[i:i + n])  # one certificate: no copy
        i += n
    return out


def _too_large(what, n):
    return "%s has %d bytes: too large for CA certificates (at most %d)" % (what, n, MAX_BYTES)


def ders(data, what="the CA file", strict=True):
    """bytes of a .pem/.crt/.der file -> [DER bytes, ...]; ValueError in words when it is not one.
    strict: also every character of the PEM text (config.py: at boot, in an update's check and on
    the host; at each connect mbedTLS checks the certificates anyway)."""
    if not data:
        raise ValueError("%s is empty" % what)
    if len(data) > MAX_BYTES:
        raise ValueError(_too_large(what, len(data)))
    if data[0] == 0x30:
        return _split_der(data, what)
    out = []
    prev = 0  # where the text after the last certificate starts
    while True:
        i = data.find(_BEGIN, prev)
        # Between certificates only comments: a "-----" there is a BEGIN or END line that is
        # damaged (its certificate would be skipped without a word), or another kind of block.
        if data.find(b"-----", prev, len(data) if i < 0 else i) >= 0:
            raise ValueError("%s: a BEGIN or END line is damaged, or it holds something other than "
                             "certificates" % what)
        if i < 0:
            break
        j = data.find(_END, i)
        if j < 0:
            raise ValueError("%s: a certificate has no END line (cut short?)" % what)
        i += len(_BEGIN)
        try:
            der = binascii.a2b_base64(memoryview(data)[i:j])  # a view: this runs at each TLS connect
            # strict: the decoders skip what is not base64 without a word, so a damaged character
            # shows only as text longer than what was decoded (4 characters per 3 bytes). Counted
            # in C, not a byte at a time: this also runs inside an update's install step.
            if strict and j - i - sum(data.count(c, i, j) for c in _SPACE) != (len(der) + 2) // 3 * 4:
                raise ValueError("%s: a certificate's text is damaged (not base64)" % what)
            out += _split_der(der, what)
        except ValueError as e:
            raise ValueError(str(e) if what in str(e) else "%s: a certificate's text is damaged" % what)
        prev = j + len(_END)
    if not out:
        raise ValueError("%s holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----, or DER)"
                         % what)
    return out


def read(path, strict=True):
    """The DER blocks of the file at path; ValueError in words (a missing file included)."""
    what = "mqtt.ca_file %s" % path
    try:
        n = os.stat(path)[6]
        if n > MAX_BYTES:
            raise ValueError(_too_large(what, n))  # said before reading any of it
        with open(path, "rb") as f:
            data = f.read(n)  # read(n) allocates n: never more than the file (the heap is small)
    except OSError:
        raise ValueError("%s: file not found (it goes beside config.json; `make config` copies it "
                         "to the device)" % what)
    out = ders(data, what, strict)
    if strict:
        _usable(out, what)
    return out


def _usable(blocks, what):
    """On the device, each certificate parsed by the TLS library that loads it at connect: one it
    cannot use (an Ed25519 CA, a certificate request) would otherwise pass here and then fail every
    connect, retried for ever. The host's TLS library is another one: there, the device says it."""
    import sys
    if sys.implementation.name != "micropython":
        return
    try:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    except (ImportError, AttributeError):
        return  # a port without TLS: mqtt.tls fails at connect, in words
    for k in range(len(blocks)):
        try:
            ctx.load_verify_locations(cadata=blocks[k])
        except (ValueError, OSError) as e:
            raise ValueError("%s: certificate %d of %d cannot be used by this device's TLS library "
                             "(%s); it takes CA certificates with RSA or ECDSA keys"
                             % (what, k + 1, len(blocks), e))
