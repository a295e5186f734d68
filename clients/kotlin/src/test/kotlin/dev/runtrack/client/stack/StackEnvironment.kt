package dev.runtrack.client.stack

import dev.runtrack.client.Channels
import io.grpc.ManagedChannel
import io.grpc.Metadata
import java.nio.file.Files
import java.nio.file.Path
import java.util.Properties

/**
 * The running test stack the `stack` tests talk to, as tests/integration/test_kotlin_stack.py passes it
 * (system properties, or the environment variables in brackets):
 *
 * - `runtrack.endpoint` (RUNTRACK_ENDPOINT): HOST:PORT of Envoy's TLS listener, HOST the name its
 *   certificate carries (`localhost:18443` for the test stack);
 * - `runtrack.ca` (RUNTRACK_CA): the PEM of the CA that signed it;
 * - `runtrack.tokens` (RUNTRACK_TOKENS): a properties file naming each role's runner and the tokens
 *   the stack's key signed for them: `user.ROLE=ID`, `token.ROLE=JWT`, and for some roles
 *   `expired.ROLE=JWT`, a token already expired.
 *
 * Anything missing fails the test that needs it, naming what is missing: these tests never pass or
 * skip without a server.
 */
class StackEnvironment(
    val host: String,
    val port: Int,
    val caPem: ByteArray,
    private val tokens: Properties,
) {
    /** A TLS channel to the stack's Envoy, trusting only the stack's CA, as a phone trusts a private CA. */
    fun channel(): ManagedChannel = Channels.tls(host, port, caPem)

    fun user(role: String): String = entry("user.$role")

    fun token(role: String): String = entry("token.$role")

    /** A token for the role's runner whose `exp` has passed (beyond Envoy's clock skew). */
    fun expiredToken(role: String): String = entry("expired.$role")

    private fun entry(key: String): String =
        tokens.getProperty(key)?.takeIf { it.isNotBlank() }
            ?: throw IllegalStateException("$TOKENS: the tokens file has no $key (tests/integration/test_kotlin_stack.py writes it)")

    companion object {
        const val ENDPOINT = "runtrack.endpoint"
        const val CA = "runtrack.ca"
        const val TOKENS = "runtrack.tokens"

        /** Read once per test JVM: every stack test reads the same stack. */
        val current: StackEnvironment by lazy { load() }

        /**
         * From [lookup] (a system property, else its environment variable). Throws, naming every
         * missing or unusable setting, when the stack is not described.
         */
        fun load(lookup: (String) -> String? = ::systemOrEnvironment): StackEnvironment {
            val values = listOf(ENDPOINT, CA, TOKENS).associateWith { lookup(it)?.trim()?.takeIf(String::isNotEmpty) }
            val missing = values.filterValues { it == null }.keys
            check(missing.isEmpty()) {
                "the stack tests need a running test stack, described by ${missing.joinToString { "$it (${variable(it)})" }}: " +
                    "not set. Run them with `.venv/bin/python -m pytest tests/integration/test_kotlin_stack.py`, which " +
                    "starts the stack and passes -D$ENDPOINT=HOST:PORT (Envoy's TLS listener) -D$CA=PEM -D$TOKENS=FILE"
            }
            val endpoint = values.getValue(ENDPOINT)!!
            val host = endpoint.substringBeforeLast(':', "")
            val port = endpoint.substringAfterLast(':', "").toIntOrNull()
            check(host.isNotEmpty() && port != null && port in 1..65535) { "$ENDPOINT=$endpoint: expected HOST:PORT" }
            val ca = Path.of(values.getValue(CA)!!)
            check(Files.isReadable(ca)) { "$CA=$ca: no such file" }
            val tokensFile = Path.of(values.getValue(TOKENS)!!)
            check(Files.isReadable(tokensFile)) { "$TOKENS=$tokensFile: no such file" }
            val tokens = Properties().apply { Files.newBufferedReader(tokensFile).use { load(it) } }
            return StackEnvironment(host, port, Files.readAllBytes(ca), tokens)
        }

        private fun variable(property: String) = property.uppercase().replace('.', '_')

        private fun systemOrEnvironment(property: String): String? =
            System.getProperty(property) ?: System.getenv(variable(property))
    }
}

private val AUTHORIZATION = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER)

/** Call metadata carrying `authorization: Bearer [token]`, for the tests' own stubs. */
fun bearer(token: String): Metadata = Metadata().apply { put(AUTHORIZATION, "Bearer $token") }
