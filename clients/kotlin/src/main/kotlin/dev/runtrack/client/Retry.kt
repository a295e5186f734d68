package dev.runtrack.client

import com.google.rpc.ErrorInfo
import com.google.rpc.RetryInfo
import io.grpc.Metadata
import io.grpc.Status
import io.grpc.StatusException
import io.grpc.StatusRuntimeException
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.delay
import kotlin.random.Random
import kotlin.time.Duration
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.nanoseconds
import kotlin.time.Duration.Companion.seconds

/** The ErrorInfo domain of RunTrack's own errors. */
const val DOMAIN = "runtrack"

/** Reasons that say the service is busy: a phone waits out the server's delay, then a jitter on top. */
val OVERLOAD_REASONS = setOf("RATE_LIMITED", "REPLICA_OVERLOADED")

// A retry can fix these: the server, its store, Envoy or the network failed, not the request.
private val RETRYABLE = setOf(
    Status.Code.UNAVAILABLE, Status.Code.DEADLINE_EXCEEDED, Status.Code.RESOURCE_EXHAUSTED, Status.Code.ABORTED,
)

// Retried too, but only when no RunTrack server said so: then they come from the transport (a stream
// reset by a proxy, a connection lost mid-call), not from a verdict on the request.
private val TRANSPORT = setOf(Status.Code.INTERNAL, Status.Code.UNKNOWN, Status.Code.CANCELLED)

private val STATUS_DETAILS = Metadata.Key.of("grpc-status-details-bin", Metadata.BINARY_BYTE_MARSHALLER)

/** What a failed call says in its `google.rpc.Status` details (CONTRACT §7). */
data class ErrorDetails(
    val code: Status.Code,
    val message: String?,
    val reason: String? = null,
    val domain: String? = null,
    val metadata: Map<String, String> = emptyMap(),
    val retryDelay: Duration? = null,
)

/** The details a gRPC failure carries in its `grpc-status-details-bin` trailer; null when [error] is none. */
fun errorDetails(error: Throwable): ErrorDetails? {
    val (status, trailers) = generateSequence(error) { it.cause }.firstNotNullOfOrNull {
        when (it) {
            is StatusException -> it.status to it.trailers
            is StatusRuntimeException -> it.status to it.trailers
            else -> null
        }
    } ?: return null
    val details = trailers?.get(STATUS_DETAILS)?.let { runCatching { com.google.rpc.Status.parseFrom(it) }.getOrNull() }
        ?.takeIf { it.code == status.code.value() }  // details contradicting the status are not ours
    var info: ErrorInfo? = null
    var delay: Duration? = null
    for (any in details?.detailsList.orEmpty()) {
        when (any.typeUrl.substringAfterLast('/')) {
            "google.rpc.ErrorInfo" -> info = ErrorInfo.parseFrom(any.value)
            "google.rpc.RetryInfo" -> RetryInfo.parseFrom(any.value).retryDelay.let {
                delay = it.seconds.seconds + it.nanos.nanoseconds
            }
        }
    }
    return ErrorDetails(status.code, status.description, info?.reason, info?.domain, info?.metadataMap.orEmpty(), delay)
}

/** How to retry a failed call: no sooner than [atLeast]; [overloaded] when the service said it is busy. */
data class RetryAdvice(val atLeast: Duration, val overloaded: Boolean)

/**
 * Null when a retry cannot help (the request itself was refused); else how to retry. A cancellation
 * of the caller's own coroutine is never retried: it is rethrown.
 */
fun retryAdvice(error: Throwable): RetryAdvice? {
    if (error is CancellationException) throw error
    val details = errorDetails(error) ?: return null
    return when {
        details.code in RETRYABLE -> RetryAdvice(details.retryDelay ?: Duration.ZERO, details.reason in OVERLOAD_REASONS)
        details.code in TRANSPORT && details.domain != DOMAIN -> RetryAdvice(Duration.ZERO, false)
        else -> null
    }
}

/**
 * Exponential backoff with full jitter: attempt n waits a uniform time in [0, min(cap, base·2ⁿ)],
 * never less than the server's RetryInfo. After an overload refusal (RATE_LIMITED,
 * REPLICA_OVERLOADED) the jitter is added on top of the server's delay instead, so that the phones
 * refused together do not all come back at the same instant.
 */
class Backoff(
    val base: Duration = 100.milliseconds,
    val cap: Duration = 5.seconds,
    val maxAttempts: Int = 50,
    private val random: Random = Random.Default,
) {
    /** The ceiling of attempt [attempt]'s jitter. */
    fun window(attempt: Int): Duration =
        if (attempt >= 62 || base * (1L shl attempt).toDouble() > cap) cap else base * (1L shl attempt).toDouble()

    fun delay(attempt: Int, advice: RetryAdvice = RetryAdvice(Duration.ZERO, false)): Duration {
        val jitter = window(attempt) * random.nextDouble()
        return if (advice.overloaded) advice.atLeast + jitter else maxOf(advice.atLeast, jitter)
    }
}

/**
 * [call] again after each failure a retry can fix, no sooner than the backoff and the server's
 * RetryInfo say, until it answers or [Backoff.maxAttempts] retries failed; any other error is thrown.
 * For calls a second try cannot do twice: StopRun (idempotent), reads, DeleteLiveLink.
 */
suspend fun <T> retrying(backoff: Backoff, onRetry: (Throwable, Duration) -> Unit = { _, _ -> }, call: suspend () -> T): T {
    var attempt = 0
    while (true) {
        try {
            return call()
        } catch (error: Exception) {
            val advice = retryAdvice(error)
            if (advice == null || attempt >= backoff.maxAttempts) throw error
            attempt++
            val wait = backoff.delay(attempt, advice)
            onRetry(error, wait)
            delay(wait)
        }
    }
}
