"""OUTBOUND_CA_BUNDLE: an on-premise CRM with a self-signed certificate, and TRAML and Entra behind a
private CA, over real TLS on loopback (the simulators, real httpx / azure-identity / ssl).

With the bundle the calls work (and public CAs stay trusted); without it they fail at once with a
CertificateUntrusted naming the service, the server and the setting, and a mail processed meanwhile
records that message.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.adapters import tls
from shared.adapters.crm_lime import LimeCrm
from shared.adapters.graph import GraphAdapter, GraphClients
from shared.adapters.traml import TramlClient
from shared.config import ConfigError, Settings
from shared.domain import envelope
from shared.domain.envelope import MessageJob
from shared.domain.mail import Address, InboundMail
from shared.domain.model import PROCESSED, Mailbox
from shared.services.clients import ClientService
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
from tests.support.stack import CLIENT_ID, SECRET, TENANT, app_settings
from tools.sim.graph import GraphSim
from tools.sim.lime import LimeSim
from tools.sim.traml import TramlSim


class NoSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A self-signed server certificate for 127.0.0.1, as `openssl req -x509` makes for an on-premise
    server: (PEM path to trust, server SSLContext)."""
    directory = tmp_path_factory.mktemp("onprem-tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lime.customer.local")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "onprem.pem", directory / "onprem.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return str(cert_path), ctx


def serve(sim, ctx):
    sim._ctx = ctx  # the simulator serves this certificate instead of the test CA's
    return sim.start()


@pytest.fixture
def onprem_lime(self_signed):
    sim = serve(LimeSim(tls=True), self_signed[1])
    yield sim
    sim.stop()


async def test_lime_with_a_self_signed_certificate_works_with_the_bundle_and_fails_clearly_without(
        onprem_lime, self_signed):
    url = f"{onprem_lime.https_url}/{onprem_lime.database}"
    trusted = LimeCrm(url, onprem_lime.api_key, ca_bundle=self_signed[0], sleep=NoSleep())
    try:
        assert (await trusted.check_schema()).ok
        assert await trusted.get_ticket("999999") is None
    finally:
        await trusted.close()

    sleeps = NoSleep()
    untrusted = LimeCrm(url, onprem_lime.api_key, sleep=sleeps)
    try:
        with pytest.raises(tls.CertificateUntrusted) as err:
            await untrusted.get_ticket("1")
    finally:
        await untrusted.close()
    message = str(err.value)
    assert message.startswith(f"Lime CRM at {onprem_lime.https_url}: the server's TLS certificate is not trusted "
                              "(self-signed certificate)")
    assert "set OUTBOUND_CA_BUNDLE to the file's path" in message
    assert sleeps.waits == []  # not retried inside the call: only the setting can fix it

    wrong = LimeCrm(url, onprem_lime.api_key, ca_bundle=onprem_lime.ca_path, sleep=NoSleep())  # another CA
    try:
        with pytest.raises(tls.CertificateUntrusted, match=r"OUTBOUND_CA_BUNDLE \(.*sim-ca.pem\) does not hold the "
                                                           "CA that signed it"):
            await wrong.get_ticket("1")
    finally:
        await wrong.close()


async def test_a_mail_meanwhile_records_the_certificate_error_and_goes_through_once_it_is_trusted(
        onprem_lime, self_signed):
    clock = FakeClock()
    box = Mailbox(id="box-1", address="support@contoso.example", client="demo", tenant_id="t")
    mail_store, ledger = FakeMail(), FakeLedger(clock)
    mail_store.put(box, InboundMail(
        mailbox_id=box.id, message_id="m1", internet_message_id="<m1@customer.example>",
        sender=Address("anna@customer.example", "Anna Andersson"), subject="Printer broken",
        received_at=clock.now() - timedelta(minutes=1), body_content_type="text", body="It does not print.",
        parent_folder_id=FakeMail.INBOX))
    url = f"{onprem_lime.https_url}/{onprem_lime.database}"
    job = MessageJob(mailbox_id=box.id, message_id="m1")

    queue = FakeQueue()

    def processor(crm):
        return MessageProcessor(ProcessDeps(registry=FakeRegistry(box), ledger=ledger, mail=mail_store, crm=crm,
                                            queue=queue, clock=clock))
    untrusted = LimeCrm(url, onprem_lime.api_key, sleep=NoSleep())
    # transient: the mail waits (re-enqueued with growing delays for hours) while the setting is fixed
    assert (await processor(untrusted).run(job)).status == "requeued"
    await untrusted.close()
    row = ledger.rows[(box.id, "m1")]
    assert "CertificateUntrusted: Lime CRM at https://127.0.0.1" in row.last_error
    assert "OUTBOUND_CA_BUNDLE" in row.last_error and mail_store.deleted == []
    [(_, text, delay)] = queue.sent
    job = envelope.decode(text, MessageJob)
    assert job.attempt == 1
    queue.sent.clear()
    clock.advance(delay)  # its next try, once OUTBOUND_CA_BUNDLE names the CA

    trusted = LimeCrm(url, onprem_lime.api_key, ca_bundle=self_signed[0], sleep=NoSleep())
    outcome = await processor(trusted).run(job)
    await trusted.close()
    assert outcome.status == PROCESSED and mail_store.deleted == ["m1"]
    assert [o["title"] for o in onprem_lime.objects("helpdesk")] == ["Printer broken"]


async def test_traml_behind_a_private_ca(self_signed):
    sim = serve(TramlSim(tls=True), self_signed[1])
    try:
        base = sim.https_url + sim.base_path
        trusted = TramlClient(base, sim.api_key, ca_bundle=self_signed[0], sleep=NoSleep())
        assert await trusted.ping() == "sim-1.0"
        await trusted.close()
        untrusted = TramlClient(base, sim.api_key, sleep=NoSleep())
        with pytest.raises(tls.CertificateUntrusted, match=r"^TRAML at https://127\.0\.0\.1:\d+: the server's TLS "
                                                           r"certificate is not trusted \(self-signed certificate\)"):
            await untrusted.ping()
        await untrusted.close()
    finally:
        sim.stop()


async def test_entra_token_behind_a_private_ca_and_the_validate_check_names_it():
    graph = GraphSim().start()  # its token endpoint is HTTPS, signed by the simulators' test CA
    try:
        graph.add_app(TENANT, CLIENT_ID, secret=SECRET, permissions={"Mail.ReadWrite"})
        env = app_settings("UseDevelopmentStorage=true", graph, "https://x.example")
        trusted = GraphAdapter(GraphClients(Settings.from_env(env)))
        assert "Mail.ReadWrite" in (await trusted.token_claims("demo"))["roles"]
        env["OUTBOUND_CA_BUNDLE"] = ""
        settings = Settings.from_env(env)
        untrusted = GraphAdapter(GraphClients(settings))
        with pytest.raises(tls.CertificateUntrusted, match=r"^Entra ID at https://127\.0\.0\.1:\d+: the server's TLS "
                                                           "certificate is not trusted"):
            await untrusted.token_claims("demo")

        class NoMailboxes:
            async def list(self):
                return []
        result = await ClientService(settings.graph_clients, NoMailboxes(), untrusted, FakeClock(),
                                     lambda name: True).validate("demo")
        assert result["ok"] is False and result["reason"] == "tls_untrusted"
        assert "OUTBOUND_CA_BUNDLE" in result["checks"][0]["detail"]
    finally:
        graph.stop()


def test_the_bundle_adds_to_the_default_store_and_a_bad_one_is_named(self_signed, tmp_path):
    context = tls.ssl_context(self_signed[0])
    subjects = [dict(x[0] for x in c["subject"]).get("commonName") for c in context.get_ca_certs()]
    assert "lime.customer.local" in subjects and len(subjects) > 50  # public CAs (Entra, TRAML) stay trusted
    combined = open(tls.combined_bundle(self_signed[0]), "rb").read()
    assert open(self_signed[0], "rb").read().strip() in combined and combined.count(b"BEGIN CERTIFICATE") > 50
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:" + "s" * 20,
            "PUBLIC_BASE_URL": "https://x.example"}
    assert Settings.from_env({**base, "OUTBOUND_CA_BUNDLE": self_signed[0]}).ca_bundle == self_signed[0]
    with pytest.raises(ConfigError, match="OUTBOUND_CA_BUNDLE names '/no/such/ca.pem', which does not exist"):
        Settings.from_env({**base, "OUTBOUND_CA_BUNDLE": "/no/such/ca.pem"})
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(ConfigError, match="is not a PEM bundle of CA certificates"):
        Settings.from_env({**base, "OUTBOUND_CA_BUNDLE": str(junk)})
