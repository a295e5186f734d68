package dev.runtrack.client

import com.google.protobuf.Any
import com.google.protobuf.MessageLite
import com.google.rpc.errorInfo
import com.google.rpc.retryInfo
import io.grpc.Metadata
import io.grpc.Status
import io.grpc.StatusException
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.ExperimentalCoroutinesApi
import kotlinx.coroutines.test.currentTime
import kotlinx.coroutines.test.runTest
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import kotlin.random.Random
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds

class RetryTest {
    /** A failure as a RunTrack server sends it: the status, and google.rpc.Status in grpc-status-details-bin. */
    private fun failure(code: Status.Code, reason: String? = null, retryDelay: Duration? = null, detailsCode: Status.Code = code): StatusException {
        val details = com.google.rpc.Status.newBuilder().setCode(detailsCode.value()).setMessage("refused")
        reason?.let { details.addDetails(pack("google.rpc.ErrorInfo", errorInfo { this.reason = it; domain = DOMAIN })) }
        retryDelay?.let {
            details.addDetails(pack("google.rpc.RetryInfo", retryInfo {
                this.retryDelay = com.google.protobuf.Duration.newBuilder()
                    .setSeconds(it.inWholeSeconds).setNanos((it.inWholeNanoseconds % 1_000_000_000).toInt()).build()
            }))
        }
        val trailers = Metadata().apply {
            put(Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER), details.build().toByteArray())
        }
        return StatusException(code.toStatus().withDescription("refused"), trailers)
    }

    private fun pack(type: String, message: MessageLite): Any =
        Any.newBuilder().setTypeUrl("type.googleapis.com/$type").setValue(message.toByteString()).build()

    @Test
    fun `full jitter stays between zero and the exponential window, capped`() {
        val backoff = Backoff(base = 100.milliseconds, cap = 5.seconds, random = Random(7))
        for (attempt in 0..12) {
            val window = minOf(5.seconds, 100.milliseconds * (1 shl attempt).toDouble())
            assertEquals(window, backoff.window(attempt))
            val delays = List(2000) { backoff.delay(attempt) }
            assertTrue(delays.all { it >= Duration.ZERO && it <= window }, "attempt $attempt outside [0, $window]")
            assertTrue(delays.min() < window * 0.05 && delays.max() > window * 0.95, "attempt $attempt not spread over its window")
        }
        assertEquals(5.seconds, backoff.window(200))
    }

    @Test
    fun `the server's RetryInfo is the least wait`() {
        val backoff = Backoff(random = Random(1))
        val advice = RetryAdvice(3.seconds, overloaded = false)
        assertTrue(List(1000) { backoff.delay(2, advice) }.all { it == 3.seconds })  // window 0.4 s: the floor wins
        assertTrue(List(1000) { backoff.delay(10, advice) }.all { it >= 3.seconds && it <= 5.seconds })
    }

    @Test
    fun `after an overload refusal the jitter comes on top of the server's delay`() {
        val backoff = Backoff(random = Random(2))
        val delays = List(2000) { backoff.delay(3, RetryAdvice(5.seconds, overloaded = true)) }
        assertTrue(delays.all { it >= 5.seconds && it <= 5.seconds + 800.milliseconds })
        assertTrue(delays.max() - delays.min() > 700.milliseconds)
    }

    @Test
    fun `RetryInfo and the overload reasons are read from the status details`() {
        assertEquals(RetryAdvice(2500.milliseconds, overloaded = true),
            retryAdvice(failure(Status.Code.UNAVAILABLE, "REPLICA_OVERLOADED", 2500.milliseconds)))
        assertEquals(RetryAdvice(5.seconds, overloaded = true),
            retryAdvice(failure(Status.Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 5.seconds)))
        assertEquals(RetryAdvice(100.milliseconds, overloaded = false),
            retryAdvice(failure(Status.Code.UNAVAILABLE, "REPLICA_SHUTTING_DOWN", 100.milliseconds)))
        assertEquals(RetryAdvice(Duration.ZERO, overloaded = false), retryAdvice(failure(Status.Code.DEADLINE_EXCEEDED)))
        val details = errorDetails(failure(Status.Code.RESOURCE_EXHAUSTED, "RATE_LIMITED", 1.seconds))!!
        assertEquals("RATE_LIMITED" to DOMAIN, details.reason to details.domain)
    }

    @Test
    fun `a refusal of the request itself is not retried`() {
        assertNull(retryAdvice(failure(Status.Code.INVALID_ARGUMENT, "INVALID_RUN_ID")))
        assertNull(retryAdvice(failure(Status.Code.PERMISSION_DENIED, "RUN_ID_TAKEN")))
        assertNull(retryAdvice(failure(Status.Code.FAILED_PRECONDITION, "RUN_DELETED")))
        assertNull(retryAdvice(failure(Status.Code.INTERNAL, "INTERNAL")))  // a RunTrack server's own failure
        assertNull(retryAdvice(IllegalStateException("not a gRPC failure")))
    }

    @Test
    fun `a transport failure no RunTrack server vouched for is retried at once`() {
        assertEquals(RetryAdvice(Duration.ZERO, false), retryAdvice(StatusException(Status.INTERNAL)))
        assertEquals(RetryAdvice(Duration.ZERO, false), retryAdvice(StatusException(Status.CANCELLED)))
        // Details contradicting the status are not the server's: ignored.
        assertEquals(RetryAdvice(Duration.ZERO, false),
            retryAdvice(failure(Status.Code.UNKNOWN, "INTERNAL", detailsCode = Status.Code.INTERNAL)))
    }

    @Test
    fun `a cancellation of the caller is never retried`() {
        assertThrows(CancellationException::class.java) { retryAdvice(CancellationException("left the screen")) }
    }

    @OptIn(ExperimentalCoroutinesApi::class)
    @Test
    fun `retrying waits at least RetryInfo between tries until the call answers`() = runTest {
        var calls = 0
        val answer = retrying(Backoff(random = Random(3))) {
            if (++calls < 3) throw failure(Status.Code.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", 2.seconds)
            "stored"
        }
        assertEquals("stored", answer)
        assertEquals(3, calls)
        assertTrue(currentTime >= 4_000, "waited only ${currentTime} ms")
    }

    @Test
    fun `retrying gives up after the last attempt and at once on a refusal`() = runTest {
        var calls = 0
        val exhausted = runCatching { retrying(Backoff(maxAttempts = 3)) { calls++; throw failure(Status.Code.UNAVAILABLE) } }
        assertEquals(Status.Code.UNAVAILABLE, (exhausted.exceptionOrNull() as StatusException).status.code)
        assertEquals(4, calls)
        calls = 0
        val refused = runCatching { retrying(Backoff()) { calls++; throw failure(Status.Code.INVALID_ARGUMENT) } }
        assertEquals(Status.Code.INVALID_ARGUMENT, (refused.exceptionOrNull() as StatusException).status.code)
        assertEquals(1, calls)
    }
}
