package dev.runtrack.client

import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Test
import java.security.cert.CertificateException
import java.security.cert.CertificateFactory
import java.security.cert.X509Certificate

/** Trust from a PEM (fixtures.py makes the certificates): the CA's server is trusted, a stranger is not. */
class ChannelsTest {
    private fun pem(name: String) = checkNotNull(javaClass.getResource("/tls/$name")).readBytes()

    private fun certificate(name: String) =
        CertificateFactory.getInstance("X.509").generateCertificate(pem(name).inputStream()) as X509Certificate

    @Test
    fun `a server certificate signed by the CA of the PEM is trusted`() {
        val trust = Channels.trustManager(pem("ca.pem"))
        assertEquals(listOf("CN=RunTrack test CA"), trust.acceptedIssuers.map { it.subjectX500Principal.name })
        trust.checkServerTrusted(arrayOf(certificate("server.pem")), "ECDHE_ECDSA")
    }

    @Test
    fun `a certificate the CA did not sign is refused`() {
        val trust = Channels.trustManager(pem("ca.pem"))
        assertThrows(CertificateException::class.java) { trust.checkServerTrusted(arrayOf(certificate("stranger.pem")), "ECDHE_ECDSA") }
    }

    @Test
    fun `a PEM without a certificate is refused`() {
        assertThrows(IllegalArgumentException::class.java) { Channels.trustManager(ByteArray(0)) }
    }

    @Test
    fun `a TLS channel with a custom CA builds and shuts down without connecting`() {
        val channel = Channels.tls("localhost", 8443, pem("ca.pem"))
        assertEquals("localhost:8443", channel.authority())
        channel.shutdownNow()
    }
}
