package dev.runtrack.client

import io.grpc.ManagedChannel
import io.grpc.Status
import io.grpc.stub.AbstractStub
import io.grpc.Metadata
import io.grpc.okhttp.OkHttpChannelBuilder
import kotlinx.coroutines.CancellationException
import java.security.KeyStore
import java.security.cert.CertificateFactory
import javax.net.ssl.SSLContext
import javax.net.ssl.SSLSocketFactory
import javax.net.ssl.TrustManagerFactory
import javax.net.ssl.X509TrustManager
import kotlin.time.Duration

/** Channels to RunTrack on OkHttp, Android's gRPC transport. */
object Channels {
    /** TLS to the public edge: the system's CAs, or only the CAs of [caPem] (a private or development CA). */
    fun tls(host: String, port: Int = 443, caPem: ByteArray? = null): ManagedChannel =
        OkHttpChannelBuilder.forAddress(host, port).useTransportSecurity()
            .apply { if (caPem != null) sslSocketFactory(sslSocketFactory(caPem)) }
            .build()

    /** Plain HTTP/2, for a development stack on loopback. */
    fun plaintext(host: String, port: Int): ManagedChannel =
        OkHttpChannelBuilder.forAddress(host, port).usePlaintext().build()

    /** Trusts exactly the certificates in [caPem] (one or more PEM blocks). */
    fun trustManager(caPem: ByteArray): X509TrustManager {
        val certificates = CertificateFactory.getInstance("X.509").generateCertificates(caPem.inputStream())
        require(certificates.isNotEmpty()) { "no certificate in the PEM" }
        val keyStore = KeyStore.getInstance(KeyStore.getDefaultType()).apply {
            load(null, null)
            certificates.forEachIndexed { i, certificate -> setCertificateEntry("ca-$i", certificate) }
        }
        val factory = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm()).apply { init(keyStore) }
        return factory.trustManagers.filterIsInstance<X509TrustManager>().single()
    }

    fun sslSocketFactory(caPem: ByteArray): SSLSocketFactory =
        SSLContext.getInstance("TLS").apply { init(null, arrayOf(trustManager(caPem)), null) }.socketFactory
}

/**
 * The caller's bearer token (a JWT, or a live link's token), asked for before each new stream and
 * each call: the place to refresh a token about to expire. [refresh] is true after the server
 * answered UNAUTHENTICATED. Null sends no `authorization` (a replica reached without Envoy).
 */
fun interface Tokens {
    suspend fun bearer(refresh: Boolean): String?
}

private val AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER)

internal suspend fun Tokens.headers(refresh: Boolean = false): Metadata =
    Metadata().apply { bearer(refresh)?.let { put(AUTHORIZATION, "Bearer $it") } }

/**
 * [call] with the caller's token; answered UNAUTHENTICATED (the token expired, or was revoked), once
 * more with a token the hook was asked to refresh. Envoy refuses such a call before any replica sees
 * it, so the second try cannot do anything twice.
 */
internal suspend fun <T> Tokens.authorized(call: suspend (Metadata) -> T): T = try {
    call(headers())
} catch (error: CancellationException) {
    throw error
} catch (error: Exception) {
    if (errorDetails(error)?.code != Status.Code.UNAUTHENTICATED) throw error
    call(headers(refresh = true))
}

/** The stub with a deadline [timeout] from now: a call on a connection that died fails instead of hanging. */
internal fun <S : AbstractStub<S>> S.within(timeout: Duration): S =
    withDeadlineAfter(timeout.inWholeMilliseconds, java.util.concurrent.TimeUnit.MILLISECONDS)
