"""mqtt.ca_file: firmware/ca_certs.py turns a PEM or DER file (one CA or a bundle) into the DER
blocks mbedTLS loads, and refuses anything else in words, under CPython (make config) and under
MicroPython (the device) alike; config.py checks the file before it is used."""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ca_certs
import config
import sim_env


@pytest.fixture(scope="module")
def cas(tmp_path_factory):
    """Three CA certificates (RSA, RSA, EC) as (pem bytes, der bytes)."""
    out = []
    for k, kind in enumerate(("rsa", "rsa", "ec")):
        pem_path = sim_env.Broker.make_certs(str(tmp_path_factory.mktemp("ca%d" % k)), key_type=kind)[0]
        with open(pem_path, "rb") as f:
            pem = f.read()
        out.append((pem, sim_env._pem_to_der(pem)))
    return out


def test_pem_and_der_files_give_every_certificate(cas):
    pems = [p for p, _ in cas]
    ders = [d for _, d in cas]
    assert ca_certs.ders(pems[0]) == ders[:1]
    assert ca_certs.ders(ders[0]) == ders[:1]
    # A bundle as people make them: comments between, Windows line ends, a trailing blank line.
    bundle = b"# my broker\r\n" + b"\n".join(p.replace(b"\n", b"\r\n") for p in pems) + b"\n\n"
    assert ca_certs.ders(bundle) == ders
    assert ca_certs.ders(b"".join(ders)) == ders


@pytest.mark.parametrize("data, words", [
    (b"", "is empty"),
    (b"hello, this is not a certificate\n", "holds no certificate"),
    (b"-----BEGIN CERTIFICATE-----\nMIIB\n", "has no END line"),
    (b"-----BEGIN CERTIFICATE-----\nMII*B\n-----END CERTIFICATE-----\n", "not base64"),
    (b"\x30\x82\x05\x00\x01\x02", "cut short"),
    (b"x" * 20000, "too large"),
])
def test_what_is_not_a_certificate_is_refused_in_words(data, words):
    with pytest.raises(ValueError) as e:
        ca_certs.ders(data, "mqtt.ca_file ca.pem")
    assert words in str(e.value) and str(e.value).startswith("mqtt.ca_file ca.pem")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_file_cut_short_anywhere_is_refused_in_words_or_gives_the_certificates_before_the_cut(cas, data):
    ders = [d for _, d in cas]
    kind = data.draw(st.sampled_from(["pem", "der"]))
    whole = b"".join(p for p, _ in cas) if kind == "pem" else b"".join(ders)
    blob = whole[:data.draw(st.integers(0, len(whole) - 1))]
    strict = data.draw(st.booleans())
    try:
        got = ca_certs.ders(blob, strict=strict)
    except ValueError as e:
        assert str(e).startswith("the CA file"), e
        return
    # Accepted only when the cut fell between certificates: never a part of one.
    assert got == ders[:len(got)] and got, (kind, len(blob))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_changed_byte_in_a_pem_file_is_refused_or_changes_at_most_that_certificate(cas, data):
    ders = [d for _, d in cas]
    whole = b"".join(p for p, _ in cas)
    i = data.draw(st.integers(0, len(whole) - 1))
    blob = whole[:i] + bytes([data.draw(st.integers(0, 255))]) + whole[i + 1:]
    try:
        got = ca_certs.ders(blob)
    except ValueError as e:
        assert str(e).startswith("the CA file"), e
        return
    # Another letter in a certificate's text decodes to other bytes of the same length: mbedTLS
    # then refuses that certificate at the handshake. Nothing else may change.
    assert len(got) == len(ders) and [len(g) for g in got] == [len(d) for d in ders]
    assert sum(g != d for g, d in zip(got, ders)) <= 1


def test_a_key_or_other_der_file_is_not_taken_for_a_certificate(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    for key in (rsa.generate_private_key(public_exponent=65537, key_size=2048), ec.generate_private_key(ec.SECP256R1())):
        for fmt in (serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8):
            der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
            with pytest.raises(ValueError) as e:
                ca_certs.ders(der)
            assert "a key or other file" in str(e.value)


def test_micropython_reads_ca_files_exactly_as_cpython(cas, tmp_path):
    # The device's side: the same module under the real MicroPython, on whole and damaged files.
    import random
    rnd = random.Random(7)
    pem = b"".join(p for p, _ in cas)
    der = b"".join(d for _, d in cas)
    blobs = [pem, der, cas[0][0], b"", b"junk\n"]
    for _ in range(60):
        base = rnd.choice([pem, der])
        i = rnd.randrange(len(base))
        blobs.append(base[:i] if rnd.random() < 0.5 else base[:i] + bytes([rnd.randrange(256)]) + base[i + 1:])
    for k, b in enumerate(blobs):
        (tmp_path / ("%d.bin" % k)).write_bytes(b)

    def outcome(read):
        try:
            return ["ok", [d.hex() for d in read()]]
        except ValueError as e:
            return ["error", str(e)]
    want = [outcome(lambda: ca_certs.ders(b)) for b in blobs]
    script = tmp_path / "read_all.py"
    script.write_text(
        "import ca_certs, binascii, json\n"
        "out = []\n"
        "for k in range(%d):\n"
        "    with open('%%d.bin' %% k, 'rb') as f:\n"
        "        b = f.read()\n"
        "    try:\n"
        "        out.append(['ok', [binascii.hexlify(d).decode() for d in ca_certs.ders(b)]])\n"
        "    except ValueError as e:\n"
        "        out.append(['error', str(e)])\n"
        "print(json.dumps(out))\n" % len(blobs))
    r = sim_env.run_micropython(script, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == want


def configured(tmp_path, ca_file, tls=True, content=None):
    """load_file on a config naming ca_file, the file (content) beside secrets.json -> errors."""
    c = {"wifi": {"ssid": "home"}, "mqtt": {"host": "broker.lan", "tls": tls, "ca_file": ca_file}}
    (tmp_path / "config.json").write_text(json.dumps(c))
    (tmp_path / "secrets.json").write_text("{}")
    if content is not None:
        (tmp_path / ca_file).write_bytes(content)
    return config.load_file(str(tmp_path / "config.json"), str(tmp_path / "secrets.json"))[1]


def test_config_checks_the_ca_file_before_it_is_used(cas, tmp_path):
    assert configured(tmp_path, "broker-ca.pem", content=cas[0][0]) == []
    assert configured(tmp_path, "my.broker_CA-2.der", content=cas[1][1]) == []
    e = configured(tmp_path, "gone.pem")
    assert len(e) == 1 and "mqtt.ca_file" in e[0] and "gone.pem: file not found" in e[0]
    e = configured(tmp_path, "bad.crt", content=b"-----BEGIN CERTIFICATE-----\nMIIB")
    assert len(e) == 1 and "has no END line" in e[0]
    e = configured(tmp_path, "huge.pem", content=b"-" * (ca_certs.MAX_BYTES + 1))
    assert e == ["mqtt.ca_file %s has %d bytes: too large for CA certificates (at most %d)" % (
        tmp_path / "huge.pem", ca_certs.MAX_BYTES + 1, ca_certs.MAX_BYTES)]
    e = configured(tmp_path, "broker-ca.pem", tls=False)
    assert any("mqtt.tls is false" in x for x in e)
    for name in ("../ca.pem", "/ca.pem", ".x.pem", "ca.txt", "a b.pem", "config.json", "c\u00e4.pem"):
        e = configured(tmp_path, name)
        assert any(x.startswith("mqtt.ca_file: a file name beside config.json") for x in e), (name, e)
    assert configured(tmp_path, ".pem") == ["mqtt.ca_file: must be 5 to 64 characters long"]


def _unusable_cas():
    """What passes for a certificate by its shape but mbedTLS cannot trust: an Ed25519 CA (most
    mbedTLS builds lack the algorithm) and a certificate signing request (a SEQUENCE of SEQUENCEs
    too) -> [(name, PEM bytes)]."""
    import datetime
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.x509.oid import NameOID
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ed25519.Ed25519PrivateKey.generate()
    ed = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=9))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, None))
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(
        ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    pem = serialization.Encoding.PEM
    csr_pem = csr.public_bytes(pem).replace(b"CERTIFICATE REQUEST", b"CERTIFICATE")  # renamed, as people do
    return [("ed25519.pem", ed.public_bytes(pem)), ("request.crt", csr_pem)]


def test_the_device_refuses_at_boot_a_ca_its_tls_library_cannot_use(cas, tmp_path):
    # Otherwise every connect fails the same way, retried for ever, and the user sees no safe mode.
    # config.py on the real MicroPython, whose mbedTLS is the one that loads the file at connect.
    files = [("rsa.pem", cas[0][0]), ("ec.der", cas[2][1])] + _unusable_cas()
    files.append(("bundle.pem", cas[0][0] + files[2][1]))  # a good CA, then one it cannot use
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "secrets.json").write_text("{}")
    script = tmp_path / "check.py"
    script.write_text(
        "import config, json\n"
        "out = []\n"
        "for name in %r:\n"
        "    with open('config.json', 'w') as f:\n"
        "        mq = {'host': 'b.lan', 'tls': True, 'ca_file': name}\n"
        "        json.dump({'wifi': {'ssid': 'home'}, 'mqtt': mq}, f)\n"
        "    out.append(config.load_file('config.json', 'secrets.json')[1])\n"
        "print(json.dumps(out))\n" % [n for n, _ in files])
    r = sim_env.run_micropython(script, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    rsa, ec_der, ed, req, bundle = json.loads(r.stdout)
    assert rsa == [] and ec_der == []
    for errors, which in ((ed, "1 of 1"), (req, "1 of 1"), (bundle, "2 of 2")):
        assert len(errors) == 1 and "certificate %s cannot be used by this device's TLS library" % which \
            in errors[0] and "RSA or ECDSA" in errors[0], errors
