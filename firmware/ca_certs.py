# The CA certificates of mqtt.ca_file (PEM or DER, one or several) as the DER blocks mbedTLS loads:
# the device's mbedTLS may lack PEM parsing (the unix port's does), and one DER buffer holds only
# one certificate for it. Pure: config.py checks the file with it at boot and on the host (`make
# config`), mqtt_connect.py loads it at each TLS connect. In memory only while used.
import binascii
import os

MAX_BYTES = 8192  # a CA or a few (PEM: ~1-2 KB each); a larger file is the wrong one
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n\t "
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
    strict: also every character of the PEM text (config.py, once; a byte at a time in Python is
    slow on the ESP32 at every connect, where mbedTLS checks the certificates anyway)."""
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
        body = memoryview(data)[i + len(_BEGIN):j]  # not a copy: this runs at each TLS connect
        if strict:
            for c in body:
                if c not in _B64:
                    raise ValueError("%s: a certificate's text is damaged (not base64)" % what)
        try:
            out += _split_der(binascii.a2b_base64(body), what)
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
    return ders(data, what, strict)
